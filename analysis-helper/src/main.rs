//! `gatehouse-helper`: parses arguments and runs the helper's listener.

fn main() {
    println!("gatehouse-helper: not built yet (see issue 5)");
}
