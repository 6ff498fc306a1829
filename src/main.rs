fn main() {
    println!("uturn: not wired yet");
}
