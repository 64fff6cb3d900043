//! A WASI 0.2 that grants nothing, so components built for `wasm32-wasip2` link and run.
//!
//! Rust's standard library for wasip2 imports WASI interfaces even when a plugin uses none of
//! them. Plugins get no files, sockets, environment or arguments: the interfaces exist, and say
//! "nothing here". What they may use is harmless: stdout and stderr go to the gateway's log
//! (so a panic message is seen), clocks and random numbers work. Any other WASI function traps if
//! called, which fails that one hook call like any trap.
//!
//! This is written for the host's hook calls, which are synchronous and run on a worker thread:
//! nothing here blocks or needs an async runtime.

use wasmtime::component::{Component, ComponentType, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType};
use wasmtime::{Engine, StoreContextMut};

use super::host::HostState;

/// `wasi:io/error.error`.
struct IoError;
/// `wasi:io/poll.pollable`: every pollable is ready at once.
struct Pollable;
/// `wasi:io/streams.input-stream`: always at its end.
struct InputStream;
/// `wasi:io/streams.output-stream`: stdout and stderr, into the log.
struct OutputStream;
/// `wasi:cli/terminal-*`: never a terminal.
struct Terminal;

#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

#[derive(ComponentType, Lift, Lower)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

type Store<'a> = StoreContextMut<'a, HostState>;
type Out<T> = wasmtime::Result<(T,)>;

/// Defines the WASI interfaces `component` imports (at the versions it names), then makes every
/// other unknown import a trap.
pub fn add_to_linker(linker: &mut Linker<HostState>, engine: &Engine, component: &Component) -> wasmtime::Result<()> {
    let imports: Vec<String> = component.component_type().imports(engine).map(|(name, _)| name.to_string()).collect();
    for name in &imports {
        let Some((interface, version)) = name.split_once('@') else { continue };
        if !version.starts_with("0.2.") {
            continue;
        }
        let mut instance = linker.instance(name)?;
        match interface {
            "wasi:io/error" => io_error(&mut instance)?,
            "wasi:io/poll" => poll(&mut instance)?,
            "wasi:io/streams" => streams(&mut instance)?,
            "wasi:cli/environment" => environment(&mut instance)?,
            "wasi:cli/exit" => {
                instance.func_wrap("exit", |_: Store<'_>, _: (Result<(), ()>,)| -> wasmtime::Result<()> {
                    wasmtime::bail!("the plugin called exit")
                })?;
            }
            "wasi:cli/stdin" => {
                instance.resource("input-stream", ResourceType::host::<InputStream>(), |_, _| Ok(()))?;
                instance.func_wrap("get-stdin", |_: Store<'_>, (): ()| -> Out<Resource<InputStream>> {
                    Ok((Resource::new_own(0),))
                })?;
            }
            "wasi:cli/stdout" => output(&mut instance, "get-stdout", 1)?,
            "wasi:cli/stderr" => output(&mut instance, "get-stderr", 2)?,
            "wasi:cli/terminal-input" => {
                instance.resource("terminal-input", ResourceType::host::<Terminal>(), |_, _| Ok(()))?;
            }
            "wasi:cli/terminal-output" => {
                instance.resource("terminal-output", ResourceType::host::<Terminal>(), |_, _| Ok(()))?;
            }
            "wasi:cli/terminal-stdin" => terminal(&mut instance, "terminal-input", "get-terminal-stdin")?,
            "wasi:cli/terminal-stdout" => terminal(&mut instance, "terminal-output", "get-terminal-stdout")?,
            "wasi:cli/terminal-stderr" => terminal(&mut instance, "terminal-output", "get-terminal-stderr")?,
            "wasi:random/random" => random(&mut instance, "get-random-bytes", "get-random-u64")?,
            "wasi:random/insecure" => random(&mut instance, "get-insecure-random-bytes", "get-insecure-random-u64")?,
            "wasi:random/insecure-seed" => {
                instance.func_wrap("insecure-seed", |_: Store<'_>, (): ()| -> Out<(u64, u64)> {
                    Ok(((fastrand::u64(..), fastrand::u64(..)),))
                })?;
            }
            "wasi:clocks/wall-clock" => wall_clock(&mut instance)?,
            "wasi:clocks/monotonic-clock" => monotonic_clock(&mut instance)?,
            "wasi:filesystem/preopens" => {
                instance.resource("descriptor", ResourceType::host::<()>(), |_, _| Ok(()))?;
                instance.func_wrap("get-directories", |_: Store<'_>, (): ()| -> Out<Vec<(Resource<()>, String)>> {
                    Ok((Vec::new(),))
                })?;
            }
            _ => {}
        }
    }
    linker.define_unknown_imports_as_traps(component)
}

fn io_error(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;
    instance.func_wrap("[method]error.to-debug-string", |_: Store<'_>, _: (Resource<IoError>,)| -> Out<String> {
        Ok(("stream error".to_string(),))
    })
}

fn poll(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    instance
        .func_wrap("[method]pollable.ready", |_: Store<'_>, _: (Resource<Pollable>,)| -> Out<bool> { Ok((true,)) })?;
    instance.func_wrap("[method]pollable.block", |_: Store<'_>, _: (Resource<Pollable>,)| -> wasmtime::Result<()> {
        Ok(())
    })?;
    instance.func_wrap("poll", |_: Store<'_>, (pollables,): (Vec<Resource<Pollable>>,)| -> Out<Vec<u32>> {
        Ok(((0..pollables.len() as u32).collect(),))
    })
}

fn streams(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;
    instance.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    instance.resource("input-stream", ResourceType::host::<InputStream>(), |_, _| Ok(()))?;
    instance.resource("output-stream", ResourceType::host::<OutputStream>(), |mut store, _| {
        store.data_mut().flush_output();
        Ok(())
    })?;
    for read in ["[method]input-stream.read", "[method]input-stream.blocking-read"] {
        instance.func_wrap(
            read,
            |_: Store<'_>, _: (Resource<InputStream>, u64)| -> Out<Result<Vec<u8>, StreamError>> {
                Ok((Err(StreamError::Closed),))
            },
        )?;
    }
    instance.func_wrap(
        "[method]output-stream.check-write",
        |_: Store<'_>, _: (Resource<OutputStream>,)| -> Out<Result<u64, StreamError>> { Ok((Ok(4096),)) },
    )?;
    for write in ["[method]output-stream.write", "[method]output-stream.blocking-write-and-flush"] {
        instance.func_wrap(
            write,
            |mut store: Store<'_>, (_, bytes): (Resource<OutputStream>, Vec<u8>)| -> Out<Result<(), StreamError>> {
                store.data_mut().write_output(&bytes);
                Ok((Ok(()),))
            },
        )?;
    }
    for flush in ["[method]output-stream.flush", "[method]output-stream.blocking-flush"] {
        instance.func_wrap(
            flush,
            |mut store: Store<'_>, _: (Resource<OutputStream>,)| -> Out<Result<(), StreamError>> {
                store.data_mut().flush_output();
                Ok((Ok(()),))
            },
        )?;
    }
    instance.func_wrap(
        "[method]output-stream.subscribe",
        |_: Store<'_>, _: (Resource<OutputStream>,)| -> Out<Resource<Pollable>> { Ok((Resource::new_own(0),)) },
    )
}

fn output(instance: &mut LinkerInstance<'_, HostState>, getter: &str, rep: u32) -> wasmtime::Result<()> {
    instance.resource("output-stream", ResourceType::host::<OutputStream>(), |mut store, _| {
        store.data_mut().flush_output();
        Ok(())
    })?;
    instance
        .func_wrap(getter, move |_: Store<'_>, (): ()| -> Out<Resource<OutputStream>> { Ok((Resource::new_own(rep),)) })
}

fn terminal(instance: &mut LinkerInstance<'_, HostState>, resource: &str, getter: &str) -> wasmtime::Result<()> {
    instance.resource(resource, ResourceType::host::<Terminal>(), |_, _| Ok(()))?;
    instance.func_wrap(getter, |_: Store<'_>, (): ()| -> Out<Option<Resource<Terminal>>> { Ok((None,)) })
}

fn environment(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance
        .func_wrap("get-environment", |_: Store<'_>, (): ()| -> Out<Vec<(String, String)>> { Ok((Vec::new(),)) })?;
    instance.func_wrap("get-arguments", |_: Store<'_>, (): ()| -> Out<Vec<String>> { Ok((Vec::new(),)) })?;
    instance.func_wrap("initial-cwd", |_: Store<'_>, (): ()| -> Out<Option<String>> { Ok((None,)) })
}

fn random(instance: &mut LinkerInstance<'_, HostState>, bytes: &str, number: &str) -> wasmtime::Result<()> {
    instance.func_wrap(bytes, |_: Store<'_>, (len,): (u64,)| -> Out<Vec<u8>> {
        let mut buffer = vec![0u8; len.min(1 << 16) as usize];
        getrandom::fill(&mut buffer).map_err(|e| wasmtime::format_err!("no random bytes: {e}"))?;
        Ok((buffer,))
    })?;
    instance.func_wrap(number, |_: Store<'_>, (): ()| -> Out<u64> {
        let mut buffer = [0u8; 8];
        getrandom::fill(&mut buffer).map_err(|e| wasmtime::format_err!("no random bytes: {e}"))?;
        Ok((u64::from_le_bytes(buffer),))
    })
}

fn wall_clock(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance.func_wrap("now", |_: Store<'_>, (): ()| -> Out<Datetime> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok((Datetime { seconds: now.as_secs(), nanoseconds: now.subsec_nanos() },))
    })?;
    instance.func_wrap("resolution", |_: Store<'_>, (): ()| -> Out<Datetime> {
        Ok((Datetime { seconds: 0, nanoseconds: 1 },))
    })
}

fn monotonic_clock(instance: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    instance.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    instance.func_wrap("now", |_: Store<'_>, (): ()| -> Out<u64> { Ok((monotonic_ns(),)) })?;
    instance.func_wrap("resolution", |_: Store<'_>, (): ()| -> Out<u64> { Ok((1,)) })?;
    for subscribe in ["subscribe-instant", "subscribe-duration"] {
        instance.func_wrap(subscribe, |_: Store<'_>, _: (u64,)| -> Out<Resource<Pollable>> {
            Ok((Resource::new_own(0),))
        })?;
    }
    Ok(())
}

/// Nanoseconds since the first call in this process.
fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}
