//! Hook calls, with arguments lowered and outcomes lifted more cheaply than the generated bindings
//! do.
//!
//! - Lowering a list into a guest asks the guest's `cabi_realloc` for memory first: a call into
//!   the sandbox that costs about as much as the rest of the list's lowering (~470 instructions),
//!   and the generated bindings make it for an empty list too. The request context is empty for
//!   the first plugin of every route, and for every plugin of a route whose plugins set none. Here
//!   an empty `fields` list is lowered as the pointer `cabi_realloc` itself answers for zero bytes
//!   (the alignment, in the Rust and C guests wit-bindgen generates), without asking.
//! - The generated bindings lift each list of an outcome into a new `Vec`, a byte at a time,
//!   which the host then decodes. Here header changes are checked where the guest left them, in
//!   its memory, and become [`Op`]s directly; context entries are copied in one `memcpy`.
//!
//! The records have the WIT types of the generated ones; [`check`] proves it once per instance,
//! so each call can skip wasmtime's type check.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext};
use wasmtime::component::{ComponentNamedList, ComponentType, Func, Lift, Lower, TypedFunc};
use wasmtime::{AsContext, AsContextMut, ValRaw};

use super::PluginFailure;
use super::bindings::hooks::Guest;
use super::bindings::types::{Backend, RequestAction, ResponseAction, Selection, TlsInfo};
use super::chain::{Op, validate_ops};

/// A request as the WIT's `types.request` record.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Request<'a> {
    /// The request line and headers (see the WIT).
    #[component(name = "head")]
    pub head: &'a [u8],
    /// TLS facts of the client connection.
    #[component(name = "tls")]
    pub tls: Option<TlsInfo<'a>>,
    /// The request context.
    #[component(name = "context")]
    pub context: Fields<'a>,
}

/// A response as the WIT's `types.response-head` record.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct ResponseHead<'a> {
    /// The status code.
    #[component(name = "status")]
    pub status: u16,
    /// The response headers.
    #[component(name = "headers")]
    pub headers: Fields<'a>,
    /// The request's method.
    #[component(name = "request-method")]
    pub request_method: &'a str,
    /// The request's path as the backend saw it.
    #[component(name = "request-path")]
    pub request_path: &'a str,
    /// The request's headers as the backend saw them.
    #[component(name = "request-headers")]
    pub request_headers: Fields<'a>,
    /// The name of the route.
    #[component(name = "route")]
    pub route: &'a str,
    /// The request context.
    #[component(name = "context")]
    pub context: Fields<'a>,
}

/// A WIT `fields` list, lowered without a call into the guest when it is empty.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

// SAFETY: the ABI and type check of the list it wraps, `list<u8>`.
unsafe impl ComponentType for Fields<'_> {
    type Lower = <[u8] as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <[u8] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[u8] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lowers as `[u8]` does, except that an empty list's pointer is the one `cabi_realloc`
// answers for zero bytes of alignment 1; a guest reads no byte of an empty list.
unsafe impl Lower for Fields<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        if self.0.is_empty() {
            // Pointer and length, as 64-bit values whatever the memory's width (wasmtime's rule).
            dst.write([ValRaw::i64(1), ValRaw::i64(0)]);
            return Ok(());
        }
        self.0.linear_lower_to_flat(cx, ty, dst)
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        // Only flat arguments take the shortcut: every hook's arguments fit in them.
        self.0.linear_lower_to_memory(cx, ty, offset)
    }
}

/// What on-request decided, as the WIT's `types.request-outcome`.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RequestOutcome {
    /// Continue or respond.
    #[component(name = "action")]
    pub action: RequestAction,
    /// The changes.
    #[component(name = "changes")]
    pub changes: RequestChanges,
}

/// The changes of on-request, as the WIT's `types.request-changes`, header changes checked.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct RequestChanges {
    /// A new method.
    #[component(name = "method")]
    pub method: Option<String>,
    /// A new path.
    #[component(name = "path")]
    pub path: Option<String>,
    /// A new query.
    #[component(name = "query")]
    pub query: Option<String>,
    /// The request's header changes.
    #[component(name = "headers")]
    pub headers: HeaderChanges,
    /// The response's header changes.
    #[component(name = "response-headers")]
    pub response_headers: HeaderChanges,
    /// Context entries to set, a `fields` block.
    #[component(name = "context")]
    pub context: Bytes,
}

/// What on-response decided, as the WIT's `types.response-outcome`.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct ResponseOutcome {
    /// Keep or replace.
    #[component(name = "action")]
    pub action: ResponseAction,
    /// The changes.
    #[component(name = "changes")]
    pub changes: ResponseChanges,
}

/// The changes of on-response, as the WIT's `types.response-changes`, header changes checked.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct ResponseChanges {
    /// A new status code.
    #[component(name = "status")]
    pub status: Option<u16>,
    /// The response's header changes.
    #[component(name = "headers")]
    pub headers: HeaderChanges,
    /// Context entries to set, a `fields` block.
    #[component(name = "context")]
    pub context: Bytes,
}

/// A WIT `header-changes` list, checked as it is lifted: the changes, or why they are invalid.
pub struct HeaderChanges(pub Result<Vec<Op>, PluginFailure>);

/// A WIT `list<u8>`, copied out of the guest's memory in one piece.
pub struct Bytes(pub Vec<u8>);

/// Implements `ComponentType` and `Lift` for a wrapper of what a `list<u8>` lifts to.
macro_rules! byte_list {
    ($ty:ident, $from_guest:expr) => {
        // SAFETY: the ABI and type check of `list<u8>`.
        unsafe impl ComponentType for $ty {
            type Lower = <[u8] as ComponentType>::Lower;

            const ABI: CanonicalAbiInfo = <[u8] as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <[u8] as ComponentType>::typecheck(ty, types)
            }
        }

        // SAFETY: reads the pointer and length of a `list<u8>` and only the bytes they bound,
        // after checking that they lie in the guest's memory.
        unsafe impl Lift for $ty {
            fn linear_lift_from_flat(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                src: &Self::Lower,
            ) -> wasmtime::Result<Self> {
                let bytes = guest_bytes(cx.memory(), src[0].get_u32(), src[1].get_u32())?;
                Ok($ty($from_guest(bytes)))
            }

            fn linear_lift_from_memory(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                bytes: &[u8],
            ) -> wasmtime::Result<Self> {
                let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                let bytes = guest_bytes(cx.memory(), word(0), word(4))?;
                Ok($ty($from_guest(bytes)))
            }
        }
    };
}

byte_list!(HeaderChanges, validate_ops);
byte_list!(Bytes, <[u8]>::to_vec);

/// The `len` bytes at `ptr` of a guest's memory; an error (which fails the call) if they run past
/// its end.
fn guest_bytes(memory: &[u8], ptr: u32, len: u32) -> wasmtime::Result<&[u8]> {
    let (ptr, len) = (ptr as usize, len as usize);
    memory
        .get(ptr..)
        .and_then(|rest| rest.get(..len))
        .ok_or_else(|| wasmtime::format_err!("a list at {ptr} of {len} bytes runs past the plugin's memory"))
}

/// Proves that the records here have the WIT types of the instance's hooks, so that the calls
/// below may skip the check. Run once per instance.
pub fn check(hooks: &Guest, store: impl AsContext) -> wasmtime::Result<()> {
    hooks.func_on_request().func().typed::<(Request<'static>,), (RequestOutcome,)>(&store)?;
    hooks.func_on_response().func().typed::<(ResponseHead<'static>,), (ResponseOutcome,)>(&store)?;
    hooks.func_select_backend().func().typed::<(Request<'static>, &[Backend<'static>]), (Selection,)>(&store)?;
    Ok(())
}

/// Calls `on-request`.
pub fn on_request(hooks: &Guest, store: impl AsContextMut, request: Request<'_>) -> wasmtime::Result<RequestOutcome> {
    Ok(call_checked::<_, (RequestOutcome,)>(*hooks.func_on_request().func(), store, (request,))?.0)
}

/// Calls `on-response`.
pub fn on_response(
    hooks: &Guest,
    store: impl AsContextMut,
    response: ResponseHead<'_>,
) -> wasmtime::Result<ResponseOutcome> {
    Ok(call_checked::<_, (ResponseOutcome,)>(*hooks.func_on_response().func(), store, (response,))?.0)
}

/// Calls `select-backend`.
pub fn select_backend(
    hooks: &Guest,
    store: impl AsContextMut,
    request: Request<'_>,
    backends: &[Backend<'_>],
) -> wasmtime::Result<Selection> {
    Ok(call_checked::<_, (Selection,)>(*hooks.func_select_backend().func(), store, (request, backends))?.0)
}

/// Calls one of the hooks whose types [`check`] proved, without checking them again.
fn call_checked<Params, Return>(func: Func, store: impl AsContextMut, params: Params) -> wasmtime::Result<Return>
where
    Params: ComponentNamedList + Lower,
    Return: ComponentNamedList + Lift,
{
    // SAFETY: `check` proved the hooks' types when the instance was made, and only hooks come here.
    let typed = unsafe { TypedFunc::<Params, Return>::new_unchecked(func) };
    typed.call(store, params)
}
