// Apps are linked by toro-build with the script in this directory; nothing to do here
// except telling cargo when the script changes.
fn main() {
    println!("cargo:rerun-if-changed=app.ld");
}
