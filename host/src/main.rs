fn main() {
    println!("foldhost");
}
