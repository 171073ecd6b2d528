//! The key / value cache of incremental decoding: per layer, the rotated keys and the values of
//! every position seen so far.

use crate::error::{AdapterError, Result};
use candle_core::Tensor;

/// Positions a layer's buffers hold at least (they grow to the next power of two beyond).
const MIN_CAPACITY: usize = 256;

/// One layer's keys and values `[batch, kv_heads, positions, head_dim]`, in buffers with room
/// for more positions; the first `len` are valid.
#[derive(Debug, Clone, Default)]
pub(super) struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerKv {
    /// Appends `k`, `v` `[batch, kv_heads, t, head_dim]` and returns every valid position's.
    pub(super) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let end = self.len + t;
        let capacity = self.k.as_ref().map_or(0, |b| b.dims()[2]);
        if end > capacity {
            let grown = end.next_power_of_two().max(MIN_CAPACITY);
            self.k = Some(Self::grow(self.k.take(), k, self.len, grown)?);
            self.v = Some(Self::grow(self.v.take(), v, self.len, grown)?);
        }
        let (Some(kb), Some(vb)) = (&self.k, &self.v) else {
            candle_core::bail!("kv cache buffers missing")
        };
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = end;
        Ok((kb.narrow(2, 0, end)?, vb.narrow(2, 0, end)?))
    }

    /// A buffer of `capacity` positions shaped like `like`, holding the first `len` of `old`.
    fn grow(
        old: Option<Tensor>,
        like: &Tensor,
        len: usize,
        capacity: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, h, _, d) = like.dims4()?;
        let buf = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
        if let Some(old) = old.filter(|_| len > 0) {
            buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
        Ok(buf)
    }

    fn bytes(&self) -> usize {
        [&self.k, &self.v]
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// The keys and values a [`super::Llama`] has computed, so that each new token attends to the
/// positions before it without running them again ([`super::Llama::forward_cached`]). One per
/// conversation; every row of a batch is at the same position. Sliding-window layers keep every
/// position too and mask the ones outside their window, so all layers share one length. The
/// buffers grow by doubling (copying once per doubling), from room for 256 positions.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    batch: Option<usize>,
}

impl KvCache {
    /// An empty cache for a model of `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); layers],
            len: 0,
            batch: None,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the buffers are released).
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            *l = LayerKv::default();
        }
        self.len = 0;
        self.batch = None;
    }

    /// Keeps only the first `len` positions (a conversation that continues from an earlier
    /// point: the next pass runs the positions after them). No-op when `len` ≥ [`Self::len`].
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for l in &mut self.layers {
            l.len = len;
        }
        self.len = len;
        if len == 0 {
            self.batch = None;
        }
    }

    /// Bytes held by the buffers (allocated capacity, keys and values of every layer).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes).sum()
    }

    /// Checks that a pass of `batch × t` tokens fits this cache and a model of `layers` layers
    /// with `max_positions` positions.
    pub(super) fn check(
        &mut self,
        layers: usize,
        batch: usize,
        t: usize,
        max_positions: usize,
    ) -> Result<()> {
        let invalid = |reason: String| AdapterError::InvalidState {
            layer: "kv cache".into(),
            op: "forward_cached",
            reason,
        };
        if self.layers.len() != layers {
            return Err(invalid(format!(
                "the cache was made for {} layers, the model has {layers}",
                self.layers.len()
            )));
        }
        if t == 0 {
            return Err(invalid("no token to run".into()));
        }
        if let Some(b) = self.batch.filter(|&b| b != batch) {
            return Err(invalid(format!(
                "the cache holds {b} row(s), the input has {batch}"
            )));
        }
        let end = self.len.checked_add(t).filter(|&e| e <= max_positions);
        if end.is_none() {
            return Err(invalid(format!(
                "{} cached + {t} new positions exceed max_position_embeddings = {max_positions}",
                self.len
            )));
        }
        self.batch = Some(batch);
        Ok(())
    }

    /// Layer `i`'s cache.
    pub(super) fn layer(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }

    /// Records `t` more positions.
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `[1, 2, t, 3]` keys whose every element is its position.
    fn positions(from: usize, t: usize) -> Tensor {
        let v: Vec<f32> = (0..2 * t * 3)
            .map(|i| (from + (i / 3) % t) as f32)
            .collect();
        Tensor::from_vec(v, (1, 2, t, 3), &Device::Cpu).unwrap()
    }

    /// Growing past the first buffer (256 positions) keeps every position, truncating drops the
    /// tail, and what is appended after it lands at the kept length.
    #[test]
    fn buffers_grow_and_truncate_keeping_positions() {
        let mut kv = LayerKv::default();
        kv.append(&positions(0, 200), &positions(0, 200)).unwrap();
        let (k, v) = kv
            .append(&positions(200, 100), &positions(200, 100))
            .unwrap();
        assert_eq!(k.dims(), &[1, 2, 300, 3]);
        assert_eq!(kv.bytes(), 2 * 2 * 512 * 3 * 4, "doubled to 512 positions");
        let want: Vec<f32> = (0..300).map(|p| p as f32).collect();
        for t in [&k, &v] {
            let got: Vec<f32> = t
                .narrow(1, 1, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let firsts: Vec<f32> = got.chunks(3).map(|c| c[0]).collect();
            assert_eq!(firsts, want);
        }
        kv.len = 250;
        let (k, _) = kv.append(&positions(900, 1), &positions(900, 1)).unwrap();
        assert_eq!(k.dim(2).unwrap(), 251);
        let last: Vec<f32> = k
            .narrow(2, 249, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&last[..6], &[249.0, 249.0, 249.0, 900.0, 900.0, 900.0]);
    }
}
