//! `weir catalog check | diff | changelog | export`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use weir_proto::Catalog;

/// Loads a catalog directory for a command that only reads it; an invalid one is an
/// error listing every problem.
pub(super) fn load_catalog_dir(dir: &Path) -> anyhow::Result<Catalog> {
    Catalog::load_dir(dir).map_err(|e| anyhow::anyhow!("{}: invalid catalog:\n{e}", dir.display()))
}

pub(super) fn catalog_diff(old_dir: &Path, new_dir: &Path) -> anyhow::Result<ExitCode> {
    let old = load_catalog_dir(old_dir)?;
    let new = load_catalog_dir(new_dir)?;
    let changes = weir_proto::catalog::docs::diff(&old, &new);
    for c in &changes {
        println!("{c}");
    }
    let breaking = weir_proto::catalog::check::compatible(&old, &new);
    if changes.is_empty() {
        println!("no changes");
    } else if breaking.is_empty() {
        println!("{} change(s), none breaking", changes.len());
    } else {
        println!(
            "{} change(s); {} break the append-only rule:",
            changes.len(),
            breaking.len()
        );
        for p in &breaking {
            println!("  {p}");
        }
        // A script or CI step sees a breaking diff without parsing it.
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn catalog_export(dir: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let schemas = weir_proto::catalog::docs::json_schemas(&load_catalog_dir(dir)?);
    match out {
        None => println!("{}", serde_json::to_string_pretty(&schemas)?),
        Some(out) => {
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
            for (key, schema) in &schemas {
                let path = out.join(format!("{}.schema.json", key.replace('/', ".")));
                let mut text = serde_json::to_string_pretty(schema)?;
                text.push('\n');
                std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            }
            println!("{} schema(s) written to {}", schemas.len(), out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn catalog_check(previous: Option<&Path>, dir: &Path) -> anyhow::Result<ExitCode> {
    let new = match Catalog::load_dir(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("catalog check failed: {} problem(s)", e.problems.len());
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(old_dir) = previous {
        let old = Catalog::load_dir(old_dir)
            .map_err(|e| anyhow::anyhow!("--previous {}: invalid catalog:\n{e}", old_dir.display()))?;
        let problems = weir_proto::catalog::check::compatible(&old, &new);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "catalog check failed: {} breaking edit(s) against {}",
                problems.len(),
                old_dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let versions: usize = new.events.values().map(|e| e.versions.len()).sum();
    println!(
        "{}: ok ({} environments, {} fields, {} events, {} versions)",
        dir.display(),
        new.environments.len(),
        new.fields.len(),
        new.events.len(),
        versions
    );
    Ok(ExitCode::SUCCESS)
}
