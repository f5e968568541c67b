//! The `litefs-proxy` binary; everything lives in the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    litefs_proxy_server::main(std::env::args_os())
}
