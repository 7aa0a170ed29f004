//! LSTM, GRU and RNN in every direction (forward, reverse, bidirectional), both layouts, with
//! `sequence_lens` (steps past a sequence's end leave its state unchanged and output zeros, so reverse
//! directions start at each sequence's own last step), initial states, peepholes, `clip`,
//! `input_forget` and GRU's `linear_before_reset`. The input projection of all time steps is one matrix
//! product; each step then adds one product with the recurrent weights.

use candle_core::{DType, Tensor, bail};

use super::{Kernel, NodeCtx, Result, arg, host_i64, opt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Sigmoid,
    Tanh,
    Relu,
}

impl Act {
    fn parse(name: &str) -> Result<Act> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sigmoid" => Act::Sigmoid,
            "tanh" => Act::Tanh,
            "relu" => Act::Relu,
            other => bail!("recurrent activation '{other}' is not supported (Sigmoid, Tanh and Relu are)"),
        })
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::Sigmoid => super::elementwise::sigmoid(x),
            Act::Tanh => super::elementwise::tanh(x),
            Act::Relu => x.relu(),
        }
    }
}

#[derive(Clone, Debug)]
struct Common {
    hidden: usize,
    /// `true` for a reverse direction, one entry per direction.
    reverse: Vec<bool>,
    batch_first: bool,
    clip: Option<f64>,
    /// `per_direction` activations for each direction.
    acts: Vec<Vec<Act>>,
}

impl Common {
    fn read(ctx: &NodeCtx<'_>, defaults: &[Act]) -> Result<Common> {
        let a = ctx.attrs();
        let reverse = match a.string("direction").as_deref().unwrap_or("forward") {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            other => bail!("{} direction '{other}'", ctx.node.op_type),
        };
        let hidden = a.int("hidden_size", 0);
        let Ok(hidden) = usize::try_from(hidden) else {
            bail!("hidden_size {hidden}")
        };
        let clip = a.get("clip").map(|c| c.f as f64).filter(|&c| c > 0.0);
        let n = defaults.len();
        let acts = match a.strings("activations") {
            Some(list) if !list.is_empty() => {
                if list.len() != n * reverse.len() {
                    bail!(
                        "{} activations {list:?}: expected {} names",
                        ctx.node.op_type,
                        n * reverse.len()
                    )
                }
                list.chunks(n)
                    .map(|c| c.iter().map(|s| Act::parse(s)).collect::<Result<Vec<_>>>())
                    .collect::<Result<_>>()?
            }
            _ => vec![defaults.to_vec(); reverse.len()],
        };
        if a.floats("activation_alpha").is_some_and(|v| !v.is_empty()) {
            bail!("{} activation_alpha is not supported", ctx.node.op_type)
        }
        Ok(Common {
            hidden,
            reverse,
            batch_first: a.int("layout", 0) != 0,
            clip,
            acts,
        })
    }

    /// X as (seq, batch, input).
    fn time_major(&self, x: &Tensor) -> Result<Tensor> {
        if self.batch_first {
            x.transpose(0, 1)?.contiguous()
        } else {
            x.contiguous()
        }
    }

    /// An initial state (dirs, batch, hidden) in the node's layout, or zeros.
    fn initial(&self, t: Option<&Tensor>, d: usize, batch: usize, like: &Tensor) -> Result<Tensor> {
        match t {
            Some(t) => {
                let t = if self.batch_first {
                    t.transpose(0, 1)?
                } else {
                    t.clone()
                };
                t.get(d)?.to_dtype(like.dtype())?.contiguous()
            }
            None => Tensor::zeros((batch, self.hidden), like.dtype(), like.device()),
        }
    }

    /// Per-step masks (batch, 1): 1 while a sequence lasts. `None` when every sequence is full length.
    fn masks(&self, lens: Option<&Tensor>, seq: usize, batch: usize, like: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let Some(lens) = lens else { return Ok(None) };
        let lens = host_i64(lens)?;
        if lens.len() != batch {
            bail!("sequence_lens has {} entries for a batch of {batch}", lens.len())
        }
        if lens.iter().all(|&l| l as usize == seq) {
            return Ok(None);
        }
        if lens.iter().any(|&l| l < 0 || l as usize > seq) {
            bail!("sequence_lens {lens:?} outside 0..={seq}")
        }
        (0..seq)
            .map(|t| {
                let m: Vec<f32> = lens.iter().map(|&l| if (t as i64) < l { 1.0 } else { 0.0 }).collect();
                Tensor::from_vec(m, (batch, 1), like.device())?.to_dtype(like.dtype())
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn clip(&self, g: Tensor) -> Result<Tensor> {
        match self.clip {
            Some(c) => g.clamp(-c, c),
            None => Ok(g),
        }
    }

    /// Stacks per-direction outputs into Y, Y_h (and Y_c) in the node's layout.
    fn finish(&self, ys: Vec<Vec<Tensor>>, finals: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        // ys[d][t]: (batch, hidden) -> Y (seq, dirs, batch, hidden)
        let per_dir: Vec<Tensor> = ys.iter().map(|steps| Tensor::stack(steps, 0)).collect::<Result<_>>()?;
        let y = Tensor::stack(&per_dir, 1)?;
        let mut out = vec![if self.batch_first {
            y.permute((2, 0, 1, 3))?.contiguous()?
        } else {
            y
        }];
        let states = finals.first().map_or(0, Vec::len);
        for s in 0..states {
            let per: Vec<Tensor> = finals.iter().map(|f| f[s].clone()).collect();
            let st = Tensor::stack(&per, 0)?;
            out.push(if self.batch_first {
                st.transpose(0, 1)?.contiguous()?
            } else {
                st
            });
        }
        Ok(out)
    }
}

/// One direction's weights, oriented for `x @ W^T`: prepared once at load when they are constants.
#[derive(Clone, Debug)]
struct DirWeights {
    /// W^T (input, G*H), contiguous.
    wt: Tensor,
    /// R^T (H, G*H), contiguous.
    rt: Tensor,
    /// The input bias Wb and the recurrence bias Rb, (G*H) each.
    wb: Option<Tensor>,
    rb: Option<Tensor>,
}

impl DirWeights {
    fn new(w: &Tensor, r: &Tensor, b: Option<&Tensor>, d: usize, gh: usize) -> Result<DirWeights> {
        let (wb, rb) = match b {
            Some(b) => {
                let b = b.get(d)?;
                (
                    Some(b.narrow(0, 0, gh)?.contiguous()?),
                    Some(b.narrow(0, gh, gh)?.contiguous()?),
                )
            }
            None => (None, None),
        };
        Ok(DirWeights {
            wt: w.get(d)?.t()?.contiguous()?,
            rt: r.get(d)?.t()?.contiguous()?,
            wb,
            rb,
        })
    }

    /// Wb + Rb, for the cells that add both to the input projection.
    fn bias_sum(&self) -> Result<Option<Tensor>> {
        match (&self.wb, &self.rb) {
            (Some(w), Some(r)) => Ok(Some(w.add(r)?)),
            _ => Ok(None),
        }
    }
}

/// Every direction's weights: prepared at compile time when W, R and B are constants, else per call.
struct Weights {
    prepared: Option<Vec<DirWeights>>,
    gates: usize,
    hidden: usize,
    dirs: usize,
}

impl Weights {
    fn new(ctx: &NodeCtx<'_>, gates: usize, c: &Common) -> Result<Weights> {
        let b = ctx.const_input(3);
        let b_ready = b.is_some() || !ctx.has_input(3);
        let prepared = match (ctx.const_input(1), ctx.const_input(2)) {
            (Some(w), Some(r)) if b_ready => Some(
                (0..c.reverse.len())
                    .map(|d| DirWeights::new(w, r, b, d, gates * c.hidden))
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        Ok(Weights {
            prepared,
            gates,
            hidden: c.hidden,
            dirs: c.reverse.len(),
        })
    }

    fn get(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<DirWeights>> {
        match &self.prepared {
            Some(p) => Ok(p.clone()),
            None => {
                let (w, r) = (arg(inputs, 1)?, arg(inputs, 2)?);
                (0..self.dirs)
                    .map(|d| DirWeights::new(w, r, opt(inputs, 3), d, self.gates * self.hidden))
                    .collect()
            }
        }
    }
}

/// Blends the new state into the old one where the mask is 1.
fn masked(mask: Option<&Tensor>, new: Tensor, old: &Tensor) -> Result<Tensor> {
    match mask {
        Some(m) => old.add(&new.sub(old)?.broadcast_mul(m)?),
        None => Ok(new),
    }
}

fn output(mask: Option<&Tensor>, h: &Tensor) -> Result<Tensor> {
    match mask {
        Some(m) => h.broadcast_mul(m),
        None => Ok(h.clone()),
    }
}

fn steps(reverse: bool, seq: usize) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..seq).rev())
    } else {
        Box::new(0..seq)
    }
}

/// x (seq, batch, input) x W^T + bias -> (seq, batch, G*H).
fn project(x: &Tensor, wt: &Tensor, bias: Option<Tensor>) -> Result<Tensor> {
    let (seq, batch, input) = x.dims3()?;
    let y = x.reshape((seq * batch, input))?.matmul(wt)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b)?,
        None => y,
    };
    y.reshape((seq, batch, wt.dims()[1]))
}

fn check_float(x: &Tensor, op: &str) -> Result<()> {
    if !matches!(x.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        bail!("{op} on {:?} inputs is not supported", x.dtype())
    }
    Ok(())
}

/// Runs a recurrent cell over every direction and time step. `prepare` builds per-direction extras
/// (peepholes, split weights) and `step` maps (x·Wᵀ at t, states) to the new states, h first; masks,
/// initial states and the output layout are handled here once for all three cells.
#[allow(clippy::too_many_arguments)]
fn run_cell<P>(
    c: &Common,
    inputs: &[Option<&Tensor>],
    op: &str,
    weights: &Weights,
    fold_recurrent_bias: bool,
    states: usize,
    prepare: impl Fn(usize, &DirWeights) -> Result<P>,
    step: impl Fn(&P, &DirWeights, &[Act], &Tensor, &[Tensor]) -> Result<Vec<Tensor>>,
) -> Result<Vec<Tensor>> {
    let x = arg(inputs, 0)?;
    check_float(x, op)?;
    let dw = weights.get(inputs)?;
    let x = c.time_major(x)?;
    let (seq, batch, _) = x.dims3()?;
    let masks = c.masks(opt(inputs, 4), seq, batch, &x)?;
    let mut ys = Vec::with_capacity(c.reverse.len());
    let mut finals = Vec::with_capacity(c.reverse.len());
    for (d, &rev) in c.reverse.iter().enumerate() {
        let w = &dw[d];
        let bias = if fold_recurrent_bias {
            w.bias_sum()?
        } else {
            w.wb.clone()
        };
        let xw = project(&x, &w.wt, bias)?;
        let extra = prepare(d, w)?;
        let mut state: Vec<Tensor> = (0..states)
            .map(|k| c.initial(opt(inputs, 5 + k), d, batch, &x))
            .collect::<Result<_>>()?;
        let mut out = vec![state[0].clone(); seq];
        for t in steps(rev, seq) {
            let new = step(&extra, w, &c.acts[d], &xw.get(t)?, &state)?;
            let m = masks.as_ref().map(|m| &m[t]);
            out[t] = output(m, &new[0])?;
            state = new
                .into_iter()
                .zip(&state)
                .map(|(n, o)| masked(m, n, o))
                .collect::<Result<_>>()?;
        }
        ys.push(out);
        finals.push(state);
    }
    c.finish(ys, finals)
}

pub(super) fn lstm(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let c = Common::read(ctx, &[Act::Sigmoid, Act::Tanh, Act::Tanh])?;
    let input_forget = ctx.attrs().int("input_forget", 0) != 0;
    let weights = Weights::new(ctx, 4, &c)?;
    let hs = c.hidden;
    Ok(Kernel::new(move |i| {
        // Peepholes P (dirs, 3H): input, output, forget.
        let prepare = |d: usize, _: &DirWeights| -> Result<Option<[Tensor; 3]>> {
            opt(i, 7)
                .map(|p| {
                    let p = p.get(d)?;
                    Ok([p.narrow(0, 0, hs)?, p.narrow(0, hs, hs)?, p.narrow(0, 2 * hs, hs)?])
                })
                .transpose()
        };
        let step = |peep: &Option<[Tensor; 3]>, w: &DirWeights, acts: &[Act], xw: &Tensor, s: &[Tensor]| {
            let (h, cell) = (&s[0], &s[1]);
            let (fa, ga, ha) = (acts[0], acts[1], acts[2]);
            let gates = xw.add(&h.matmul(&w.rt)?)?;
            let gate = |k: usize| gates.narrow(1, k * hs, hs);
            let (mut gi, mut gf, mut go) = (gate(0)?, gate(2)?, gate(1)?);
            if let Some([pi, _, pf]) = peep {
                gi = gi.broadcast_add(&cell.broadcast_mul(pi)?)?;
                gf = gf.broadcast_add(&cell.broadcast_mul(pf)?)?;
            }
            let it = fa.apply(&c.clip(gi)?)?;
            let ft = if input_forget {
                it.affine(-1.0, 1.0)?
            } else {
                fa.apply(&c.clip(gf)?)?
            };
            let ct = ga.apply(&c.clip(gate(3)?)?)?;
            let new_cell = ft.mul(cell)?.add(&it.mul(&ct)?)?;
            if let Some([_, po, _]) = peep {
                go = go.broadcast_add(&new_cell.broadcast_mul(po)?)?;
            }
            let ot = fa.apply(&c.clip(go)?)?;
            Ok(vec![ot.mul(&ha.apply(&new_cell)?)?, new_cell])
        };
        run_cell(&c, i, "LSTM", &weights, true, 2, prepare, step)
    }))
}

pub(super) fn gru(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let c = Common::read(ctx, &[Act::Sigmoid, Act::Tanh])?;
    let linear_before_reset = ctx.attrs().int("linear_before_reset", 0) != 0;
    let weights = Weights::new(ctx, 3, &c)?;
    let hs = c.hidden;
    Ok(Kernel::new(move |i| {
        // R^T split into the update/reset gates and the candidate, with their recurrence biases.
        let prepare = |_: usize, w: &DirWeights| -> Result<(Tensor, Tensor, Option<Tensor>, Option<Tensor>)> {
            let rb_zr = w.rb.as_ref().map(|b| b.narrow(0, 0, 2 * hs)).transpose()?;
            let rb_h = w.rb.as_ref().map(|b| b.narrow(0, 2 * hs, hs)).transpose()?;
            Ok((
                w.rt.narrow(1, 0, 2 * hs)?.contiguous()?,
                w.rt.narrow(1, 2 * hs, hs)?.contiguous()?,
                rb_zr,
                rb_h,
            ))
        };
        let step = |p: &(Tensor, Tensor, Option<Tensor>, Option<Tensor>),
                    _: &DirWeights,
                    acts: &[Act],
                    xt: &Tensor,
                    s: &[Tensor]| {
            let (rt_zr, rt_h, rb_zr, rb_h) = p;
            let h = &s[0];
            let (fa, ga) = (acts[0], acts[1]);
            let add_bias = |t: Tensor, b: &Option<Tensor>| match b {
                Some(b) => t.broadcast_add(b),
                None => Ok(t),
            };
            let hzr = add_bias(h.matmul(rt_zr)?, rb_zr)?;
            let z = fa.apply(&c.clip(xt.narrow(1, 0, hs)?.add(&hzr.narrow(1, 0, hs)?)?)?)?;
            let rg = fa.apply(&c.clip(xt.narrow(1, hs, hs)?.add(&hzr.narrow(1, hs, hs)?)?)?)?;
            let recur = if linear_before_reset {
                rg.mul(&add_bias(h.matmul(rt_h)?, rb_h)?)?
            } else {
                add_bias(rg.mul(h)?.matmul(rt_h)?, rb_h)?
            };
            let cand = ga.apply(&c.clip(xt.narrow(1, 2 * hs, hs)?.add(&recur)?)?)?;
            // h = (1 - z) * cand + z * h
            Ok(vec![cand.add(&z.mul(&h.sub(&cand)?)?)?])
        };
        run_cell(&c, i, "GRU", &weights, false, 1, prepare, step)
    }))
}

pub(super) fn rnn(ctx: &NodeCtx<'_>) -> Result<Kernel> {
    let c = Common::read(ctx, &[Act::Tanh])?;
    let weights = Weights::new(ctx, 1, &c)?;
    Ok(Kernel::new(move |i| {
        let step = |_: &(), w: &DirWeights, acts: &[Act], xt: &Tensor, s: &[Tensor]| {
            Ok(vec![acts[0].apply(&c.clip(xt.add(&s[0].matmul(&w.rt)?)?)?)?])
        };
        run_cell(&c, i, "RNN", &weights, true, 1, |_, _| Ok(()), step)
    }))
}
