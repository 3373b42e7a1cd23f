//! Placeholder until doctor lands (being written now).
pub fn run(_: Option<&str>, _: Option<u32>, _: bool) -> anyhow::Result<bool> {
    anyhow::bail!("doctor is not built yet")
}
