//! The man page and the shell completions, generated from the command-line
//! definitions so they never drift from what the binaries accept.
//! `make install` runs `defragd generate-docs DIR` and `defragctl
//! generate-docs DIR`.

use std::io;
use std::path::Path;

use clap_complete::Shell;

/// Writes `<name>.8` (and a page per subcommand) and completions for
/// bash, zsh and fish into `dir`.
pub fn generate(mut cmd: clap::Command, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    cmd.build();
    write_pages(&cmd, &name, dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, dir)?;
    }
    Ok(())
}

/// The page of `cmd` and of each of its visible subcommands, in section 8.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> io::Result<()> {
    let mut file = std::fs::File::create(dir.join(format!("{name}.8")))?;
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .render(&mut file)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(&sub.clone().name(sub_name.clone()), &sub_name, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn writes_a_man_page_and_completions() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::generate(crate::cli::Cli::command(), dir.path()).expect("generate");
        let man = std::fs::read_to_string(dir.path().join("defragd.8")).expect("man page");
        assert!(
            man.contains(".TH defragd 8") && man.contains("defrag"),
            "{man}"
        );
        assert!(
            man.contains("SIGHUP") && man.contains("78"),
            "the service's behaviour is documented"
        );
        assert!(
            dir.path().join("defragd-check.8").exists()
                && dir.path().join("defragd-defrag.8").exists()
        );
        for file in ["defragd.bash", "_defragd", "defragd.fish"] {
            assert!(dir.path().join(file).exists(), "{file} missing");
        }
    }
}
