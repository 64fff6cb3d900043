//! The request that `on-request` and `select-backend` take, lowered without a needless call into
//! the guest.
//!
//! Lowering a list into a guest asks the guest's `cabi_realloc` for memory first: a call into the
//! sandbox that costs about as much as the rest of the list's lowering (~470 instructions), and
//! the generated bindings make it for an empty list too. The request context is empty for the
//! first plugin of every route, and for every plugin of a route whose plugins set none, so that
//! call was paid on most hook calls for nothing. Here an empty context is lowered as the pointer
//! `cabi_realloc` itself answers for zero bytes (the alignment, in the Rust and C guests
//! wit-bindgen generates), without asking.
//!
//! The record has the WIT type of the generated `types::Request`; [`check`] proves it once per
//! instance, so each call can skip wasmtime's type check.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext};
use wasmtime::component::{ComponentType, Lower, TypedFunc};
use wasmtime::{AsContext, AsContextMut, ValRaw};

use super::bindings::hooks::Guest;
use super::bindings::types::{Backend, RequestOutcome, Selection, TlsInfo};

/// A request as the WIT's `types.request` record, its context lowered by [`Context`].
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
    pub context: Context<'a>,
}

/// The request context, a WIT `fields` list.
#[derive(Clone, Copy)]
pub struct Context<'a>(pub &'a [u8]);

// SAFETY: the ABI and type check of the list it wraps, `list<u8>`.
unsafe impl ComponentType for Context<'_> {
    type Lower = <[u8] as ComponentType>::Lower;

    const ABI: CanonicalAbiInfo = <[u8] as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[u8] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: lowers as `[u8]` does, except that an empty list's pointer is the one `cabi_realloc`
// answers for zero bytes of alignment 1; a guest reads no byte of an empty list.
unsafe impl Lower for Context<'_> {
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
        // Only flat arguments take the shortcut: a request record always fits in them.
        self.0.linear_lower_to_memory(cx, ty, offset)
    }
}

/// Proves that [`Request`] has the WIT type the instance's hooks take, so that the calls below
/// may skip the check. Run once per instance.
pub fn check(hooks: &Guest, store: impl AsContext) -> wasmtime::Result<()> {
    hooks.func_on_request().func().typed::<(Request<'static>,), (RequestOutcome,)>(&store)?;
    hooks.func_select_backend().func().typed::<(Request<'static>, &[Backend<'static>]), (Selection,)>(&store)?;
    Ok(())
}

/// Calls `on-request`.
pub fn on_request(hooks: &Guest, store: impl AsContextMut, request: Request<'_>) -> wasmtime::Result<RequestOutcome> {
    let func = *hooks.func_on_request().func();
    // SAFETY: `check` proved the types when the instance was made.
    let typed = unsafe { TypedFunc::<(Request<'_>,), (RequestOutcome,)>::new_unchecked(func) };
    Ok(typed.call(store, (request,))?.0)
}

/// Calls `select-backend`.
pub fn select_backend(
    hooks: &Guest,
    store: impl AsContextMut,
    request: Request<'_>,
    backends: &[Backend<'_>],
) -> wasmtime::Result<Selection> {
    let func = *hooks.func_select_backend().func();
    // SAFETY: `check` proved the types when the instance was made.
    let typed = unsafe { TypedFunc::<(Request<'_>, &[Backend<'_>]), (Selection,)>::new_unchecked(func) };
    Ok(typed.call(store, (request, backends))?.0)
}
