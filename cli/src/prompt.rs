//! `sdfarm prompt`: how sdfarm reads a prompt with A1111's syntax — attention fragments and
//! weights, tokens per 75-token chunk, and the prompt-editing schedule over the steps.

use std::process::ExitCode;

use anyhow::Context;
use sdfarm_worker::engine::composable::composable_parts;
use sdfarm_worker::engine::conditioning::tokenize_line;
use sdfarm_worker::engine::prompt_parser::{parse_prompt_attention, prompt_schedule};
use sdfarm_worker::engine::tokenizer::PromptTokenizer;
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// The prompt, in A1111 syntax.
    pub text: String,
    /// Sampling steps the schedule is laid out over.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Hires-fix second-pass steps: lay the schedule out as A1111 does for that pass.
    #[arg(long)]
    pub hires_steps: Option<usize>,
    /// Print one JSON object: "attention", "schedule", "chunks" and "composable" (the `AND`
    /// parts with their weights and schedules).
    #[arg(long, env = "SDFARM_JSON")]
    pub json: bool,
}

pub fn prompt(args: PromptArgs) -> anyhow::Result<ExitCode> {
    if args.steps == 0 {
        anyhow::bail!("--steps 0: expected at least 1 step");
    }
    let attention = parse_prompt_attention(&args.text);
    let schedule = prompt_schedule(&args.text, args.steps, args.hires_steps, false);
    // A1111 conditions each `AND` part (with its `:weight`) on its own.
    let parts: Vec<(String, f64, Vec<(usize, String)>)> = composable_parts(&args.text)
        .into_iter()
        .map(|(text, weight)| {
            let schedule = prompt_schedule(&text, args.steps, args.hires_steps, false);
            (text, weight, schedule)
        })
        .collect();
    let tokenizer = PromptTokenizer::builtin().context("loading the CLIP tokenizer")?;
    // Token counts per chunk for each distinct prompt of the schedule.
    let mut chunked = Vec::new();
    for (until, text) in &schedule {
        let (chunks, total) = tokenize_line(&tokenizer, text)?;
        let per_chunk: Vec<usize> = chunks
            .iter()
            .map(|c| {
                // Tokens between the start token and the end/padding.
                let body = &c.tokens[1..c.tokens.len() - 1];
                body.iter()
                    .rposition(|&t| t != sdfarm_worker::engine::tokenizer::END_OF_TEXT)
                    .map_or(0, |p| p + 1)
            })
            .collect();
        chunked.push((*until, text.clone(), total, per_chunk));
    }

    if args.json {
        let out = json!({
            "attention": attention.iter().map(|(t, w)| json!([t, w])).collect::<Vec<_>>(),
            "schedule": schedule.iter().map(|(s, t)| json!([s, t])).collect::<Vec<_>>(),
            "chunks": chunked.iter().map(|(until, text, total, per)| json!({
                "until_step": until, "prompt": text, "tokens": total, "per_chunk": per,
            })).collect::<Vec<_>>(),
            "composable": parts.iter().map(|(text, weight, schedule)| json!({
                "text": text, "weight": weight,
                "schedule": schedule.iter().map(|(s, t)| json!([s, t])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }

    println!("Attention:");
    for (text, weight) in &attention {
        if *weight == -1.0 && text == "BREAK" {
            println!("  BREAK (new chunk)");
        } else {
            println!("  {weight:<8.4} {text:?}");
        }
    }
    println!("Schedule over {} steps:", args.steps);
    for (until, text, total, per) in &chunked {
        let per: Vec<String> = per.iter().map(|n| format!("{n}/75")).collect();
        println!(
            "  until step {until:>4}: {text:?} — {total} tokens, chunks [{}]",
            per.join(", ")
        );
    }
    if parts.len() > 1 || parts.iter().any(|(_, w, _)| *w != 1.0) {
        println!("Composable parts (AND), guided as uncond + sum(weight * cfg * (part - uncond)):");
        for (text, weight, schedule) in &parts {
            println!("  weight {weight:<8.4} {text:?}");
            if schedule.len() > 1 {
                for (until, t) in schedule {
                    println!("    until step {until:>4}: {t:?}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
