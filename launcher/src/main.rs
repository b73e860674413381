fn main() {
    let code = toro_launcher::main_with(std::env::args().collect());
    std::process::exit(code);
}
