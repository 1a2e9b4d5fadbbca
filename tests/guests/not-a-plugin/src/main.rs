//! A valid component of the wrong world (`wasi:cli/command`): uploads of it must be refused.

fn main() {
    println!("I am a command, not an add-on plugin");
}
