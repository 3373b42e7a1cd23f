//! Placeholder until the readers land (being written now).
pub fn ls(_: &crate::cli::LsArgs) -> anyhow::Result<bool> {
    anyhow::bail!("ls is not built yet")
}
pub fn cat(_: &crate::cli::CatArgs) -> anyhow::Result<bool> {
    anyhow::bail!("cat is not built yet")
}
