//! The `zone-agent` executable: `/init` (PID 1) of a zones Linux zone, which forks the server that
//! serves the host's commands over vsock; `zone-agent --serve` starts that server by itself. See
//! the library's docs.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let serve = matches!((args.next(), args.next()), (Some(a), None) if a == "--serve");
    // PID 1 is init whatever the kernel command line passed on as arguments.
    if std::process::id() == 1 {
        zone_agent::init::run();
    }
    if serve {
        zone_agent::server::run();
    }
    eprintln!(
        "usage: zone-agent runs as /init (PID 1) of a zones Linux zone, or as `zone-agent --serve`"
    );
    std::process::exit(2);
}
