//! `cubecl_msl`: prints, as JSON, the MSL that cubecl-cpp's Metal compiler emits for the kernels of
//! `kernels.rs`, with what the compiler reports for launching them (entry point, cube dim, shared
//! memory, buffer count). No device is involved: the device properties are those of an Apple9 GPU
//! (32-wide planes, 32 KB of threadgroup memory, 8x8 matrices), written out here.
mod kernels;

use std::sync::Arc;

use cubecl::ir::{
    DeviceIdentity, DeviceProperties, ElemType, FloatKind, HardwareProperties, MemoryDeviceProperties, TargetProperties,
};
use cubecl::prelude::*;
use cubecl_cpp::MslCompiler;

fn properties() -> Arc<DeviceProperties> {
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 30,
        max_shared_memory_size: 32768,
        max_cube_count: (u32::MAX, u32::MAX, u32::MAX),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 1024),
        num_streaming_multiprocessors: None,
        num_cpu_cores: None,
        last_level_cache_size: None,
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        max_vector_size: 4,
        cube_mma_reserved_shared_memory: 0,
    };
    let mut props = DeviceProperties::new(
        Default::default(),
        MemoryDeviceProperties::new(1 << 30, 256),
        hardware,
        cubecl::profile::TimingMethod::Device,
        DeviceIdentity::default(),
    );
    let combinations =
        cubecl_cpp::metal::supported_cmma_combinations_metal(&cubecl_cpp::metal::arch::MetalArchitecture::Metal3);
    cubecl_cpp::shared::register_wmma_features(combinations, &mut props);
    Arc::new(props)
}

fn settings(cube_dim: CubeDim) -> KernelSettings {
    KernelSettings::new(cube_dim.into(), ExecutionMode::Checked, AddressType::U32)
}

fn buffer() -> BufferCompilationArg {
    BufferCompilationArg { inplace: None }
}

/// One entry of the JSON list: the kernel's problem name, the scalars in the order CubeCL packs them
/// into its info buffer, and the compiled source with its launch facts.
fn emit(problem: &str, scalars: &[&str], kernel: &impl CubeKernel) -> String {
    let mut options = cubecl_cpp::shared::CompilationOptions::default();
    options.supports_features.fast_math = true; // as cubecl-metal compiles
    let definition = kernel.define();
    let cube_dim = definition.settings.cube_dim;
    let name = definition.settings.kernel_name.clone();
    let compiled = cubecl::Compiler::compile(&mut MslCompiler::default(), definition, &options)
        .unwrap_or_else(|err| panic!("cubecl-cpp cannot compile {problem}: {err:?}"));
    format!(
        "{{\"kernel\": {problem:?}, \"function\": {name:?}, \"cube_dim\": [{}, {}, {}], \"shared_memory_bytes\": {}, \
         \"buffers\": {}, \"scalars\": {scalars:?}, \"source\": {:?}}}",
        cube_dim.x,
        cube_dim.y,
        cube_dim.z,
        compiled.shared_memory_size,
        compiled.buffers.len(),
        compiled.source
    )
}

fn main() {
    let target = Arc::new(TargetProperties { mma: Default::default() });
    let gemm_dim = CubeDim::new_2d(32, 4);
    let f16 = ElemType::Float(FloatKind::F16);
    let f32e = ElemType::Float(FloatKind::F32);
    let gemm = |elem| {
        kernels::gemm::Gemm::new(
            settings(gemm_dim),
            properties(),
            target.clone(),
            buffer(),
            buffer(),
            buffer(),
            (),
            (),
            (),
            elem,
        )
    };
    let entries = [
        emit("gemm_f32", &["M", "N", "K"], &gemm(f32e)),
        emit("gemm_f16", &["M", "N", "K"], &gemm(f16)),
        emit(
            "softmax",
            &["cols"],
            &kernels::softmax::Softmax::new(
                settings(CubeDim::new_1d(kernels::SOFTMAX_THREADS)),
                properties(),
                target.clone(),
                buffer(),
                buffer(),
                (),
            ),
        ),
        emit(
            "attention",
            &["N", "D"],
            &kernels::attention::Attention::new(
                settings(CubeDim::new_1d(32)),
                properties(),
                target.clone(),
                buffer(),
                buffer(),
                buffer(),
                buffer(),
                (),
                (),
                1024,
            ),
        ),
    ];
    println!("{{\"cubecl\": \"0.11.3\", \"kernels\": [\n{}\n]}}", entries.join(",\n"));
}
