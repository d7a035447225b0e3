//! `gatehouse-extension`: parses arguments and runs the core on this OS's backend.

fn main() {
    println!("gatehouse-extension: not built yet (see issues 4, 6 and 7)");
}
