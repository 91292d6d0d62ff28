//! `SweepSpec` expanded into the ordered list of images to render; pure, no I/O.
//!
//! Seeds follow AUTOMATIC1111's `process_images_inner`: a run is `n_iter` batches of
//! `batch_size` images, image `i` of the whole run gets `seed + i`, and `batch_index` is its
//! place inside its batch. With a variation seed (`subseed_strength > 0`) A1111 keeps the
//! seed fixed and steps the subseed instead; that is reproduced here.
//! A *cell* is one set of parameters: a plain sweep has one, an X/Y/Z plot one per
//! combination of axis values, a prompt matrix one per prompt (see [`Cells`]).

#[cfg(test)]
mod a1111_tests;
mod cells;
mod plan;
#[cfg(test)]
mod tests;

use rand::Rng;
use sdfarm_proto::RenderParams;

use crate::spec::SweepSpec;

pub use cells::{coords, matrix_prompt, processing_order, Cell, Cells};
pub use plan::{plan_json_lines, plan_summary, PlanSummary};

/// A1111's `get_fixed_seed` draws `random.randrange(4294967294)`: `0 <= seed < 2^32 - 2`.
pub const RANDOM_SEED_BOUND: i64 = 4_294_967_294;

/// One image of a sweep, with everything a worker needs to render it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedImage {
    /// Position in the whole sweep; also orders output keys.
    pub image_index: u32,
    pub cell_index: u32,
    /// `seed` (and `subseed` when it is in use) are concrete, never -1.
    pub params: RenderParams,
}

/// -1 becomes a random seed in A1111's range; any other seed is kept.
pub fn resolve_seed(seed: i64) -> i64 {
    if seed == -1 {
        rand::rng().random_range(0..RANDOM_SEED_BOUND)
    } else {
        seed
    }
}

/// Number of cells (parameter sets) in the sweep.
pub fn cell_count(spec: &SweepSpec) -> u64 {
    Cells::new(spec, 0).len()
}

pub fn image_count(spec: &SweepSpec) -> u64 {
    let cells = Cells::new(spec, 0);
    cells.len() * u64::from(cells.images_per_cell())
}

/// Every image of the sweep, in render order, produced lazily: a sweep of a million images
/// is never held in memory. `seed` must already be resolved (see [`resolve_seed`]).
pub fn expand(spec: &SweepSpec, seed: i64) -> Expansion<'_> {
    debug_assert!(seed >= 0, "expand needs a resolved seed, got {seed}");
    let cells = Cells::new(spec, seed);
    let per_cell = u64::from(cells.images_per_cell());
    Expansion {
        end: cells.len() * per_cell,
        cells,
        per_cell,
        next: 0,
        current: None,
    }
}

/// The iterator [`expand`] returns; it knows its length and can jump ahead, so paging
/// through a large sweep costs nothing for the skipped images.
#[derive(Debug, Clone)]
pub struct Expansion<'a> {
    cells: Cells<'a>,
    per_cell: u64,
    next: u64,
    end: u64,
    /// The cell the last image came from: its images share everything but the seeds.
    current: Option<Cell>,
}

impl Iterator for Expansion<'_> {
    type Item = PlannedImage;

    fn next(&mut self) -> Option<PlannedImage> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let pos = i / self.per_cell;
        let cell = match &self.current {
            Some(c) if c.pos == pos => c,
            _ => self.current.insert(self.cells.cell(pos)),
        };
        Some(PlannedImage {
            image_index: u32::try_from(i).expect("image counts are limited below 2^32"),
            cell_index: u32::try_from(cell.index).expect("cell counts are limited below 2^32"),
            params: self.cells.image(cell, (i % self.per_cell) as u32),
        })
    }

    fn nth(&mut self, n: usize) -> Option<PlannedImage> {
        self.next = self.next.saturating_add(n as u64).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Expansion<'_> {}

/// Object key of an image: stable for a given sweep and seed, so a retried task overwrites
/// its own earlier upload instead of adding a second file.
pub fn output_key(prefix: &str, image_index: u32, seed: i64) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{image_index:05}-{seed}.png")
    } else {
        format!("{prefix}/{image_index:05}-{seed}.png")
    }
}
