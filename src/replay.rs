//! Placeholder until replay lands (being written now).
pub fn run(_: &crate::cli::ReplayArgs) -> anyhow::Result<bool> {
    anyhow::bail!("replay is not built yet")
}
