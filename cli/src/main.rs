//! `gatehouse`: the companion CLI. Subcommands talk to the extension's control socket or work
//! offline on policy files.
#![forbid(unsafe_code)]

fn main() {
    println!("gatehouse: not built yet (see issues 3, 6)");
}
