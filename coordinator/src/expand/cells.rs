//! A sweep's cells (parameter sets) in A1111's processing order, each computed from its
//! position alone so a million-cell sweep is never held in memory.
//!
//! X/Y/Z: the costliest axis is the outermost loop (`xyz_grid.py` picks the first and second
//! axes by strictly greater cost, defaulting to Z then Y), axes are applied X, Y, Z, then
//! "vary seeds" offsets the seed. Prompt matrix: one cell per prompt combination, in
//! `prompt_matrix.py`'s bit order.
//!
//! `[wildcards]` adds the outermost loop: wildcard cell `w` resolves the dynamic prompt and
//! negative prompt, then the rest of the sweep (X/Y/Z, prompt matrix, batches) expands with
//! those texts as if they had been written in the file. Seeds advance with `w` by the
//! images of one inner cell, so a plain wildcard sweep gives image `i` the seed `seed + i`
//! as A1111's dynamic-prompts batches do, while the cells of one X/Y/Z plot keep one seed.

use sdfarm_proto::RenderParams;

use crate::spec::axes::{AxisValue, Field};
use crate::spec::{PromptMatrixSpec, PromptType, SweepSpec, WildcardsSpec, XyzSpec};

use super::RANDOM_SEED_BOUND;

/// One cell: its grid position and its parameters, with the cell's seed and subseed concrete.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Position in processing (and image) order.
    pub pos: u64,
    /// Position in the grid: `ix + iy * nx + iz * nx * ny` for X/Y/Z, the prompt's index for
    /// a prompt matrix.
    pub index: u64,
    /// `[ix, iy, iz]` for X/Y/Z cells.
    pub coords: Option<[usize; 3]>,
    pub params: RenderParams,
}

#[derive(Debug, Clone)]
enum Kind<'a> {
    Single,
    Xyz {
        xyz: &'a XyzSpec,
        /// Axis numbers (0 = X) from the outermost loop to the innermost.
        order: [usize; 3],
    },
    Matrix {
        m: &'a PromptMatrixSpec,
        /// `prompt.split("|")` of the prompt the matrix varies.
        parts: Vec<String>,
    },
}

/// The cells of a sweep; cheap to clone, and `Send` so it can feed a streaming insert.
#[derive(Debug, Clone)]
pub struct Cells<'a> {
    spec: &'a SweepSpec,
    /// The base seed, or -1 when "Keep -1 for seeds" leaves it random per cell.
    seed: i64,
    subseed: i64,
    /// Mixed into per-cell random seeds so they differ between jobs yet stay reproducible.
    nonce: i64,
    kind: Kind<'a>,
    wildcards: Option<&'a WildcardsSpec>,
    /// Cells of one wildcard cell (the whole sweep without `[wildcards]`).
    inner: u64,
}

/// A1111's choice of outer loops: `first_axes_processed` and `second_axes_processed`.
pub fn processing_order(costs: [f32; 3]) -> [usize; 3] {
    let [x, y, z] = costs;
    let (first, second) = if x > y && x > z {
        (0, if y > z { 1 } else { 2 })
    } else if y > x && y > z {
        (1, if x > z { 0 } else { 2 })
    } else if z > x && z > y {
        (2, if x > y { 0 } else { 1 })
    } else {
        (2, 1)
    };
    [first, second, 3 - first - second]
}

/// `[ix, iy, iz]` of the cell at processing position `pos`, for axes of `sizes` looped
/// `order[0]` outermost.
pub fn coords(order: [usize; 3], sizes: [u64; 3], pos: u64) -> [usize; 3] {
    let (inner, middle) = (sizes[order[2]], sizes[order[1]]);
    let mut c = [0usize; 3];
    c[order[0]] = (pos / (middle * inner)) as usize;
    c[order[1]] = ((pos / inner) % middle) as usize;
    c[order[2]] = (pos % inner) as usize;
    c
}

/// SplitMix64: a well-mixed draw from (nonce, cell) for per-cell random seeds.
fn mix(nonce: i64, pos: u64) -> u64 {
    let mut z = (nonce as u64) ^ pos.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<'a> Cells<'a> {
    /// `seed` is the job's resolved seed (see `expand::resolve_seed`); with "Keep -1 for
    /// seeds" it only seeds the per-cell draws.
    pub fn new(spec: &'a SweepSpec, seed: i64) -> Cells<'a> {
        let keep = spec.xyz.as_ref().is_some_and(|x| x.keep_random_seeds);
        let kind = if let Some(xyz) = &spec.xyz {
            let costs = [0, 1, 2].map(|i| xyz.axes[i].def.cost);
            Kind::Xyz {
                xyz,
                order: processing_order(costs),
            }
        } else if let Some(m) = &spec.prompt_matrix {
            let prompt = match m.prompt_type {
                PromptType::Positive => &spec.base.prompt,
                PromptType::Negative => &spec.base.negative_prompt,
            };
            Kind::Matrix {
                m,
                parts: match &spec.wildcards {
                    // Bars inside braces separate variant options, not matrix parts.
                    Some(_) => top_level_parts(prompt),
                    None => prompt.split('|').map(str::to_string).collect(),
                },
            }
        } else {
            Kind::Single
        };
        let uses_subseed = spec.base.subseed_strength != 0.0
            || spec
                .xyz
                .as_ref()
                .is_some_and(|x| x.axes.iter().any(|a| a.def.field == Field::SubseedStrength));
        let subseed = if !uses_subseed {
            0
        } else if keep {
            spec.base.subseed
        } else {
            super::resolve_seed(spec.base.subseed)
        };
        let mut cells = Cells {
            spec,
            seed: if keep { spec.base.seed } else { seed },
            subseed,
            nonce: seed,
            kind,
            wildcards: None,
            inner: 1,
        };
        cells.inner = cells.inner_len();
        cells.wildcards = spec.wildcards.as_ref();
        cells
    }

    fn inner_len(&self) -> u64 {
        match &self.kind {
            Kind::Single => 1,
            Kind::Xyz { xyz, .. } => xyz.axes.iter().map(|a| a.len() as u64).product(),
            Kind::Matrix { parts, .. } => 1u64 << (parts.len() - 1),
        }
    }

    /// The wildcard cell and the position inside it.
    fn split(&self, pos: u64) -> (u64, u64) {
        (pos / self.inner, pos % self.inner)
    }

    pub fn spec(&self) -> &'a SweepSpec {
        self.spec
    }

    pub fn len(&self) -> u64 {
        match self.wildcards {
            Some(w) => w.cells().saturating_mul(self.inner),
            None => self.inner,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Images each cell renders: `batch_size * n_iter`, or one per prompt in a matrix.
    pub fn images_per_cell(&self) -> u32 {
        match self.kind {
            Kind::Matrix { .. } => 1,
            _ => self.spec.batch_size * self.spec.n_iter,
        }
    }

    fn coords(&self, order: [usize; 3], xyz: &XyzSpec, pos: u64) -> [usize; 3] {
        coords(order, [0, 1, 2].map(|a| xyz.axes[a].len() as u64), pos)
    }

    /// The checkpoint of the cell at `pos`, without computing the rest of it.
    pub fn model_of(&self, pos: u64) -> &'a str {
        if let Kind::Xyz { xyz, order } = &self.kind {
            let c = self.coords(*order, xyz, self.split(pos).1);
            // The last checkpoint axis applied wins, as in A1111.
            for axis in (0..3).rev() {
                if xyz.axes[axis].def.field == Field::Checkpoint {
                    if let AxisValue::Str(m) = &xyz.axes[axis].values[c[axis]] {
                        return m;
                    }
                }
            }
        }
        &self.spec.base.model
    }

    fn random(&self, pos: u64, salt: u64) -> i64 {
        (mix(self.nonce, pos.wrapping_mul(2).wrapping_add(salt)) % RANDOM_SEED_BOUND as u64) as i64
    }

    /// The cell at processing position `pos` (`pos < len()`).
    pub fn cell(&self, pos: u64) -> Cell {
        let mut p = self.spec.base.clone();
        p.seed = self.seed;
        p.subseed = self.subseed;
        let (w, pos) = self.split(pos);
        let resolved_parts;
        if let Some(wild) = self.wildcards {
            let r = wild.cell(w, self.nonce);
            p.prompt_template = wild.prompt_template.clone();
            p.prompt = r.prompt.text;
            p.negative_prompt = r.negative.text;
            p.prompt_choices = r.prompt.choices;
            p.prompt_choices.extend(r.negative.choices);
            let step = match self.kind {
                Kind::Matrix { .. } => self.inner,
                _ => u64::from(self.images_per_cell()),
            };
            let offset = i64::try_from(w.saturating_mul(step)).unwrap_or(i64::MAX);
            if p.seed != -1 {
                p.seed = p.seed.saturating_add(offset);
            }
        }
        let kind = match (&self.kind, self.wildcards) {
            (Kind::Matrix { m, .. }, Some(_)) => {
                let prompt = match m.prompt_type {
                    PromptType::Positive => &p.prompt,
                    PromptType::Negative => &p.negative_prompt,
                };
                resolved_parts = Kind::Matrix {
                    m: *m,
                    parts: prompt.split('|').map(str::to_string).collect(),
                };
                &resolved_parts
            }
            (kind, _) => kind,
        };
        let (index, coords) = match kind {
            Kind::Single => (0, None),
            Kind::Xyz { xyz, order } => {
                let c = self.coords(*order, xyz, pos);
                let sampler = p.sampler_name.clone();
                for (axis, &i) in xyz.axes.iter().zip(&c) {
                    axis.def.apply(&mut p, &axis.values[i], &axis.values);
                }
                if p.sampler_name != sampler && !self.spec.eta_explicit {
                    p.eta = crate::spec::default_eta(&p.sampler_name);
                }
                let [nx, ny, _] = [0, 1, 2].map(|a| xyz.axes[a].len() as i64);
                let [vx, vy, vz] = xyz.vary_seeds;
                let xdim = if vx { nx } else { 1 };
                let ydim = if vy { ny } else { 1 };
                let mut offset = 0i64;
                if vx {
                    offset += c[0] as i64;
                }
                if vy {
                    offset += c[1] as i64 * xdim;
                }
                if vz {
                    offset += c[2] as i64 * xdim * ydim;
                }
                p.seed = p.seed.saturating_add(offset);
                let index = (c[0] + c[1] * nx as usize + c[2] * (nx * ny) as usize) as u64;
                (index, Some(c))
            }
            Kind::Matrix { m, parts } => {
                let prompt = matrix_prompt(parts, pos, m);
                match m.prompt_type {
                    PromptType::Positive => p.prompt = prompt,
                    PromptType::Negative => p.negative_prompt = prompt,
                }
                if m.different_seeds {
                    p.seed = p.seed.saturating_add(pos as i64);
                }
                if p.subseed_strength != 0.0 {
                    p.subseed = p.subseed.saturating_add(pos as i64);
                }
                p.batch_index = (pos % u64::from(self.spec.batch_size)) as u32;
                (pos, None)
            }
        };
        let pos = w * self.inner + pos;
        // -1 left by "Keep -1 for seeds" is drawn by each cell's own `fix_seed`.
        if p.seed == -1 {
            p.seed = self.random(pos, 0);
        }
        if p.subseed_strength == 0.0 {
            p.subseed = 0;
        } else if p.subseed == -1 {
            p.subseed = self.random(pos, 1);
        }
        Cell {
            pos,
            index: w * self.inner + index,
            coords,
            params: p,
        }
    }

    /// Image `k` of a cell: A1111 gives image k of a run `seed + k`, or with a variation seed
    /// keeps the seed and steps the subseed; `batch_index` is its place in its batch.
    pub fn image(&self, cell: &Cell, k: u32) -> RenderParams {
        let mut p = cell.params.clone();
        if let Kind::Matrix { .. } = self.kind {
            return p;
        }
        if p.subseed_strength == 0.0 {
            p.seed = p.seed.saturating_add(i64::from(k));
        } else {
            p.subseed = p.subseed.saturating_add(i64::from(k));
        }
        p.batch_index = k % self.spec.batch_size;
        p
    }

    /// The legend texts and grid shape, for composing the grids once the images exist.
    pub(crate) fn xyz(&self) -> Option<(&'a XyzSpec, [usize; 3])> {
        match &self.kind {
            Kind::Xyz { xyz, order } => Some((xyz, *order)),
            _ => None,
        }
    }

    pub(crate) fn matrix_parts(&self) -> Option<&[String]> {
        match &self.kind {
            Kind::Matrix { parts, .. } => Some(parts),
            _ => None,
        }
    }
}

/// A template split at the `|` outside braces: the prompt matrix's parts.
fn top_level_parts(prompt: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0usize;
    let mut escaped = false;
    for c in prompt.chars() {
        match c {
            '{' if !escaped => depth += 1,
            '}' if !escaped => depth = depth.saturating_sub(1),
            '|' if !escaped && depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        escaped = c == '\\' && !escaped;
        parts.last_mut().expect("never empty").push(c);
    }
    parts
}

/// `prompt_matrix.py`: bit `n` of the combination number selects variable part `n + 1`,
/// stripped of spaces then commas; the fixed part goes first (or last).
pub fn matrix_prompt(parts: &[String], combination: u64, m: &PromptMatrixSpec) -> String {
    let mut selected: Vec<&str> = parts[1..]
        .iter()
        .enumerate()
        .filter(|(n, _)| combination & (1 << n) != 0)
        .map(|(_, text)| text.trim().trim_matches(','))
        .collect();
    if m.put_variable_parts_at_start {
        selected.push(&parts[0]);
    } else {
        selected.insert(0, &parts[0]);
    }
    selected.join(m.delimiter)
}
