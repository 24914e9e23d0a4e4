//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` directory, and cargo would not otherwise notice a new file there.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
