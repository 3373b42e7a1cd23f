//! Placeholder until demo lands (being written now).
pub fn run(_: &crate::cli::DemoArgs) -> anyhow::Result<bool> {
    anyhow::bail!("demo is not built yet")
}
