//! Shell completions and man pages, generated from the clap definitions
//! the binaries parse their arguments with, so that neither can disagree
//! with the flags (`xpol completions`, `xpol man`, and the same for
//! `xpolc`).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Prints the completion script for `shell` on standard output (a
/// package or the user redirects it where the shell looks, see the
/// README).
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Result<()> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script).and_then(|()| out.flush()).context("cannot write the completion script")
}

/// The man pages of `cmd` in `section`: `(file name, roff)` for the
/// command and for each of its subcommands, nested ones included
/// (`xpol-set-add.8`), as `man xpol-run` finds them. Hidden subcommands
/// and clap's `help` have none. The command's own page comes first.
pub fn man_pages(cmd: clap::Command, section: &str) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, section: &str, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let subcommands: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
        let man = clap_mangen::Man::new(cmd).section(section);
        let mut roff = Vec::new();
        man.render(&mut roff).context("cannot render a man page")?;
        pages.push((man.get_filename(), roff));
        subcommands.into_iter().try_for_each(|sub| walk(sub, section, pages))
    }
    // Built once at the top, so that each subcommand carries its display
    // name (`xpol-run`) and the arguments clap adds (`--help`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, section, &mut pages)?;
    Ok(pages)
}

/// `man [--out DIR]`: without a directory, prints the command's own page
/// (`xpol man | man -l -`); with one, writes every page into it, each
/// atomically (a reader sees the old page or the new one, and an
/// interrupted run leaves no half-written page).
pub fn man(cmd: clap::Command, section: &str, out: Option<&Path>) -> Result<()> {
    let pages = man_pages(cmd, section)?;
    let Some(dir) = out else {
        let mut stdout = std::io::stdout().lock();
        return stdout.write_all(&pages[0].1).and_then(|()| stdout.flush()).context("cannot write the man page");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, roff) in &pages {
        super::write_output(&dir.join(name), roff, &[])?;
    }
    eprintln!("wrote {} man pages to {}", pages.len(), dir.display());
    Ok(())
}
