//! Placeholder until the network engine lands (being written now).
pub fn run(
    _: &crate::cli::RecordArgs,
    _: super::Events,
    _: &super::Stop,
    _: &super::RxStats,
) -> std::io::Result<()> {
    Err(std::io::Error::other("network recording is not built yet"))
}
