pub mod assess;
pub mod ext4;
pub mod plan;
