//! Placeholder until verify lands (being written now).
pub fn run(_: &crate::cli::VerifyArgs) -> anyhow::Result<bool> {
    anyhow::bail!("verify is not built yet")
}
