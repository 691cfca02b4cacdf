# The Metal backend (src/metal/), included by CMakeLists.txt on Apple platforms only.
#
# metal-cpp: Apple's header-only C++ interface to Metal. The build gets it from the `mlx-metal` wheel
# (pyproject.toml lists it in [build-system].requires for macOS), which ships the headers at
# <site-packages>/mlx/include/metal_cpp. -DAPROTO_METAL_CPP_DIR=<folder with Metal/Metal.hpp> overrides.
#
# Prebuilt metallibs: when `xcrun -sdk macosx metal` works, every shaders/*.metal is also compiled at
# build time into <stem>.metallib, installed next to the .metal file; the backend loads it instead of
# compiling the source at run time (see prebuilt_metallib() in src/metal/metal_backend.cpp).

set(APROTO_METAL_CPP_DIR "" CACHE PATH "Folder holding metal-cpp's Metal/Metal.hpp (default: from the mlx-metal package)")
option(APROTO_PREBUILD_METALLIB "Compile shaders/*.metal into .metallib files when xcrun metal is available" ON)

if(NOT APROTO_METAL_CPP_DIR)
  # mlx-metal installs into the `mlx` package folder (a namespace package shared with the `mlx` wheel).
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.util, pathlib; s = importlib.util.find_spec('mlx'); dirs = list(s.submodule_search_locations or []) if s else []; print(next((str(p) for p in (pathlib.Path(d, 'include', 'metal_cpp') for d in dirs) if (p / 'Metal' / 'Metal.hpp').is_file()), ''))"
    OUTPUT_VARIABLE _aproto_metal_cpp
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _aproto_rc)
  if(_aproto_rc EQUAL 0 AND _aproto_metal_cpp)
    set(APROTO_METAL_CPP_DIR "${_aproto_metal_cpp}" CACHE PATH "Folder holding metal-cpp's Metal/Metal.hpp" FORCE)
  endif()
endif()
if(NOT EXISTS "${APROTO_METAL_CPP_DIR}/Metal/Metal.hpp")
  message(FATAL_ERROR
    "metal-cpp headers not found (looked for mlx/include/metal_cpp/Metal/Metal.hpp through ${Python_EXECUTABLE}).\n"
    "They come from the `mlx-metal` wheel (macOS 14+ on Apple Silicon), which `pip install .` installs into the "
    "isolated build environment. Building with --no-build-isolation? Run `pip install mlx-metal` first, or pass "
    "-DAPROTO_METAL_CPP_DIR=<folder containing Metal/Metal.hpp> (e.g. via pip's "
    "--config-settings=cmake.define.APROTO_METAL_CPP_DIR=...).")
endif()
message(STATUS "attention_proto: Metal backend with metal-cpp from ${APROTO_METAL_CPP_DIR}")

target_sources(_core PRIVATE
  "${PROJECT_SOURCE_DIR}/src/metal/metal_cpp_impl.cpp"
  "${PROJECT_SOURCE_DIR}/src/metal/metal_backend.cpp"
  "${PROJECT_SOURCE_DIR}/src/metal/binary_archive.cpp")
target_include_directories(_core SYSTEM PRIVATE "${APROTO_METAL_CPP_DIR}")
target_compile_definitions(_core PRIVATE APROTO_WITH_METAL)
# CoreGraphics: "In macOS, in order for the system to provide a default Metal device object, you must link
# to the Core Graphics framework ... if you're writing apps that don't use graphics by default, such as
# command line tools" (MTLCreateSystemDefaultDevice docs). Python is such a process; tinygrad loads it too.
target_link_libraries(_core PRIVATE "-framework Metal" "-framework Foundation" "-framework CoreGraphics")

# --- Prebuilt metallibs ---------------------------------------------------------------------------------
if(APROTO_PREBUILD_METALLIB)
  # Probe by compiling a one-line kernel: `xcrun -f metal` can find a stub when only the Command Line Tools
  # (or an Xcode without its Metal toolchain component) are installed.
  set(_aproto_probe "${CMAKE_CURRENT_BINARY_DIR}/metallib/probe.metal")
  file(WRITE "${_aproto_probe}" "#include <metal_stdlib>\nkernel void probe(device float* x [[buffer(0)]]) { x[0] = 1.0f; }\n")
  execute_process(
    COMMAND xcrun -sdk macosx metal -std=metal3.1 -fno-fast-math -c "${_aproto_probe}" -o "${CMAKE_CURRENT_BINARY_DIR}/metallib/probe.air"
    RESULT_VARIABLE _aproto_metal_rc OUTPUT_QUIET ERROR_VARIABLE _aproto_metal_err)
  if(NOT _aproto_metal_rc EQUAL 0)
    message(STATUS "attention_proto: no usable `xcrun -sdk macosx metal`; shaders compile at run time "
                   "(install Xcode's Metal toolchain for prebuilt metallibs)")
  else()
    file(GLOB _aproto_shaders CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/shaders/*.metal")
    file(GLOB _aproto_shader_headers CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/shaders/*.h")
    set(_aproto_metallibs "")
    foreach(_src IN LISTS _aproto_shaders)
      get_filename_component(_stem "${_src}" NAME_WE)
      set(_air "${CMAKE_CURRENT_BINARY_DIR}/metallib/${_stem}.air")
      set(_lib "${CMAKE_CURRENT_BINARY_DIR}/metallib/${_stem}.metallib")
      # -fno-fast-math matches the run-time compile (the backend's default; it uses a metallib only then).
      add_custom_command(
        OUTPUT "${_lib}"
        COMMAND xcrun -sdk macosx metal -std=metal3.1 -fno-fast-math -I "${PROJECT_SOURCE_DIR}/shaders"
                -c "${_src}" -o "${_air}"
        COMMAND xcrun -sdk macosx metallib "${_air}" -o "${_lib}"
        DEPENDS "${_src}" ${_aproto_shader_headers}
        COMMENT "metal: ${_stem}.metal -> ${_stem}.metallib"
        VERBATIM)
      list(APPEND _aproto_metallibs "${_lib}")
    endforeach()
    if(_aproto_metallibs)
      add_custom_target(aproto_metallibs ALL DEPENDS ${_aproto_metallibs})
      install(FILES ${_aproto_metallibs} DESTINATION attention_proto/shaders)
      target_compile_definitions(_core PRIVATE APROTO_HAVE_METALLIB)
      list(LENGTH _aproto_metallibs _n)
      message(STATUS "attention_proto: ${_n} shaders prebuilt into metallibs with xcrun metal")
    endif()
  endif()
endif()
