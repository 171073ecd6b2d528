//! CUDA forward of the rotary embeddings: candle-nn 0.11's `rope` / `rope_i` / `rope_thd` launches.

use super::cuda::view;
use super::rope::RopeKind;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::CudaStorageSlice::{BF16, F16, F32, F64};
use candle_core::cuda_backend::{kernel_name, kernels, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, WithDType};

#[allow(clippy::too_many_arguments)]
fn launch<T: DeviceRepr + WithDType>(
    kind: RopeKind,
    src: &CudaSlice<T>,
    l_src: &Layout,
    cos: &CudaSlice<T>,
    l_cos: &Layout,
    sin: &CudaSlice<T>,
    l_sin: &Layout,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let src = view(src, l_src, "src input")?;
    let cos = view(cos, l_cos, "cos input")?;
    let sin = view(sin, l_sin, "sin input")?;
    let (b, d1, d2, d) = l_src.shape().dims4()?;
    let (h, t) = if kind == RopeKind::Thd {
        (d2, d1)
    } else {
        (d1, d2)
    };
    let stride_b = if l_cos.dims().len() == 3 && l_sin.dims().len() == 3 {
        (h * t * d) as u32
    } else {
        0u32
    };
    let el = b * h * t * d;
    let cfg = LaunchConfig::for_num_elems((el / 2) as u32);
    let name = match kind {
        RopeKind::Halves => "rope",
        RopeKind::Interleaved => "rope_i",
        RopeKind::Thd => "rope_thd",
    };
    let func = dev.get_or_load_func(&kernel_name::<T>(name), &kernels::REDUCE)?;
    // SAFETY: Set later by running the kernel.
    let dst = unsafe { dev.alloc::<T>(el)? };
    let mut builder = func.builder();
    builder.arg(&src);
    builder.arg(&cos);
    builder.arg(&sin);
    builder.arg(&dst);
    let (b, h, t, d) = (b as u32, h as u32, t as u32, d as u32);
    let args: Vec<u32> = match kind {
        RopeKind::Halves => vec![b * h, t * d, d, stride_b],
        RopeKind::Interleaved => vec![b * h, t * d, stride_b],
        RopeKind::Thd => vec![b, t, h, d, stride_b],
    };
    for arg in &args {
        builder.arg(arg);
    }
    // SAFETY: ffi.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(dst)
}

/// candle-nn's rotary-embedding CUDA kernel for `kind`.
pub(crate) fn rope_fwd(
    kind: RopeKind,
    x: &CudaStorage,
    lx: &Layout,
    c: &CudaStorage,
    lc: &Layout,
    s: &CudaStorage,
    ls: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let slice = match (&x.slice, &c.slice, &s.slice) {
        (BF16(x), BF16(c), BF16(s)) => BF16(launch(kind, x, lx, c, lc, s, ls, dev)?),
        (F16(x), F16(c), F16(s)) => F16(launch(kind, x, lx, c, lc, s, ls, dev)?),
        (F32(x), F32(c), F32(s)) => F32(launch(kind, x, lx, c, lc, s, ls, dev)?),
        (F64(x), F64(c), F64(s)) => F64(launch(kind, x, lx, c, lc, s, ls, dev)?),
        _ => bail!("unsupported dtype for rope {:?} {:?}", x.dtype(), c.dtype()),
    };
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, lx.shape().clone()))
}
