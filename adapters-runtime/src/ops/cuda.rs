//! CUDA forwards of the fused softmax / norms: candle-nn 0.11's kernel launches, unchanged.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{kernel_name, kernels, Map1, Map2, Map3, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape, WithDType};

/// `(rows, columns)` of a tensor reduced over its last dimension.
fn rows(layout: &Layout) -> (usize, usize) {
    let (el, dims) = (layout.shape().elem_count(), layout.dims());
    let n_cols = dims[dims.len() - 1];
    (el / n_cols, n_cols)
}

/// The contiguous part of `s` that `l` addresses.
pub(crate) fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        None => bail!("{what} has to be contiguous"),
        Some((o1, o2)) => Ok(s.slice(o1..o2)),
    }
}

struct Softmax;
impl Map1 for Softmax {
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        dev: &CudaDevice,
        layout: &Layout,
    ) -> Result<CudaSlice<T>> {
        let src = view(src, layout, "input")?;
        let (n_rows, n_cols) = rows(layout);
        let cfg = LaunchConfig {
            grid_dim: (n_rows as u32, 1, 1),
            block_dim: (1, 32, 1),
            shared_mem_bytes: 0,
        };
        let func = dev.get_or_load_func(&kernel_name::<T>("softmax"), &kernels::REDUCE)?;
        // SAFETY: Set later by running the kernel.
        let dst = unsafe { dev.alloc::<T>(n_rows * n_cols)? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        candle_core::builder_arg!(builder, n_cols as i32);
        // SAFETY: ffi.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(dst)
    }
}

/// candle-nn's `softmax-last-dim` CUDA kernel.
pub(crate) fn softmax_fwd(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device();
    let slice = Softmax.map(&s.slice, dev, l)?;
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, l.shape().clone()))
}

/// The launch configuration candle uses for its norm kernels.
fn norm_cfg(layout: &Layout) -> (LaunchConfig, usize, usize) {
    let (n_rows, n_cols) = rows(layout);
    let block_size = if n_cols < 1024 { 32 } else { 1024 };
    let cfg = LaunchConfig {
        grid_dim: (n_rows as u32, 1, 1),
        block_dim: (block_size, 1, 1),
        shared_mem_bytes: 0,
    };
    (cfg, n_cols, block_size as usize)
}

struct Rms(f32);
impl Map2 for Rms {
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        layout: &Layout,
        alpha: &CudaSlice<T>,
        alpha_layout: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let src = view(src, layout, "input")?;
        let alpha = view(alpha, alpha_layout, "alpha")?;
        let (cfg, n_cols, block_size) = norm_cfg(layout);
        let func = dev.get_or_load_func(&kernel_name::<T>("rmsnorm"), &kernels::REDUCE)?;
        // SAFETY: Set later by running the kernel.
        let dst = unsafe { dev.alloc::<T>(layout.shape().elem_count())? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        builder.arg(&alpha);
        candle_core::builder_arg!(builder, n_cols as i32, block_size as i32, self.0);
        // SAFETY: ffi.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(dst)
    }
}

/// candle-nn's `rms-norm` CUDA kernel.
pub(crate) fn rms_norm_fwd(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let slice = Rms(eps).map(&x.slice, lx, &w.slice, lw, dev)?;
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, lx.shape().clone()))
}

struct Ln(f32);
impl Map3 for Ln {
    #[allow(clippy::too_many_arguments)]
    fn f<T: DeviceRepr + WithDType>(
        &self,
        src: &CudaSlice<T>,
        layout: &Layout,
        alpha: &CudaSlice<T>,
        alpha_layout: &Layout,
        beta: &CudaSlice<T>,
        beta_layout: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let src = view(src, layout, "input")?;
        let alpha = view(alpha, alpha_layout, "alpha")?;
        let beta = view(beta, beta_layout, "beta")?;
        let (cfg, n_cols, block_size) = norm_cfg(layout);
        let func = dev.get_or_load_func(&kernel_name::<T>("layernorm"), &kernels::REDUCE)?;
        // SAFETY: Set later by running the kernel.
        let dst = unsafe { dev.alloc::<T>(layout.shape().elem_count())? };
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        builder.arg(&alpha);
        builder.arg(&beta);
        candle_core::builder_arg!(builder, n_cols as i32, block_size as i32, self.0);
        // SAFETY: ffi.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(dst)
    }
}

/// candle-nn's `layer-norm` CUDA kernel.
pub(crate) fn layer_norm_fwd(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    b: &CudaStorage,
    lb: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let slice = Ln(eps).map(&x.slice, lx, &w.slice, lw, &b.slice, lb, dev)?;
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, lx.shape().clone()))
}
