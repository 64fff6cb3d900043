//! `incompatible`: a component that exports the hooks of `sluice:plugin@9.0.0`, a contract
//! version the gateway does not speak. It uses `wit-bindgen` directly, with a copy of the WIT
//! file whose only change is the version (`wit/plugin.wit` here). The gateway must refuse to
//! load it, with a message naming both versions.
//!
//! The hooks are trivial: it must never get as far as being called.

// The exports exist only in the component: their symbol names (`sluice:plugin/hooks@9.0.0#init`)
// are not valid in a native shared library.
#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
    });

    use exports::sluice::plugin::hooks::{
        Backend, Guest, Request, RequestOutcome, ResponseHead, ResponseOutcome, Selection,
    };
    use sluice::plugin::types::{RequestAction, RequestChanges, ResponseAction, ResponseChanges};

    struct Incompatible;

    impl Guest for Incompatible {
        fn init(_config: String) -> Result<(), String> {
            Ok(())
        }

        fn on_request(_request: Request) -> RequestOutcome {
            RequestOutcome {
                action: RequestAction::Continue,
                changes: RequestChanges {
                    method: None,
                    path: None,
                    query: None,
                    headers: Vec::new(),
                    context: Vec::new(),
                },
            }
        }

        fn on_response(_response: ResponseHead) -> ResponseOutcome {
            ResponseOutcome {
                action: ResponseAction::Continue,
                changes: ResponseChanges { status: None, headers: Vec::new(), context: Vec::new() },
            }
        }

        fn select_backend(_request: Request, _backends: Vec<Backend>) -> Selection {
            Selection::Default
        }
    }

    export!(Incompatible);
}
