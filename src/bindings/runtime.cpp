// Bindings of the backend-neutral runtime: errors, typed results, backends, memory, pipelines and
// dispatch of users' own kernels (attention_proto.Kernel).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "bindings/python.hpp"
#include "host/compiler.hpp"
#include "protos/proto.hpp"
#include "runtime/backend.hpp"
#include "runtime/memory.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace aproto::bindings {

namespace {

// A pipeline together with the backend that built it.
struct BoundPipeline {
  std::string backend;
  std::shared_ptr<Pipeline> pipeline;
};

// An exception class of the package with several bases (e.g. ResourceLimitError is a DispatchError and,
// being the caller's configuration, a ValueError).
// The class lives as long as the interpreter (never released: it is referenced at exit).
PyObject* exception(nb::module_& m, const char* name, std::initializer_list<nb::handle> bases, const char* doc) {
  nb::list list;
  for (nb::handle b : bases) list.append(b);
  const std::string qualified = std::string("attention_proto.") + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, nb::tuple(list).ptr(), nullptr);
  if (!cls) throw nb::python_error();
  m.attr(name) = nb::handle(cls);
  return cls;
}

template <class T>
std::string repr_fields(const char* name, const T& fields) {
  std::string out = std::string(name) + "(";
  for (size_t i = 0; i < fields.size(); i++) out += (i ? ", " : "") + fields[i];
  return out + ")";
}

nb::dict device_dict(const DeviceInfo& d) {
  nb::dict out;
  out["backend"] = d.backend;
  out["name"] = d.name;
  out["family"] = d.family;
  out["max_threadgroup_memory"] = d.max_threadgroup_memory;
  out["simd_width"] = d.simd_width;
  out["max_threads_per_threadgroup"] = d.max_threads_per_threadgroup;
  out["compute_units"] = d.compute_units;
  out["unified_memory"] = d.unified_memory;
  nb::dict extra;
  for (const auto& [k, v] : d.extra) extra[k.c_str()] = v;
  out["extra"] = extra;
  return out;
}

// The user's positional kernel arguments -> buffers: arrays in place, scalars and bytes as constant data.
std::vector<BufferArg> to_buffers(const nb::list& args, std::vector<nb::object>& keep) {
  std::vector<BufferArg> buffers(args.size());
  for (size_t i = 0; i < args.size(); i++) {
    nb::handle a = args[i];
    const std::string who = "argument " + std::to_string(i) + " ([[buffer(" + std::to_string(i) + ")]])";
    if (a.is_none()) continue;
    if (is_ndarray(a) && nb::cast<int>(a.attr("ndim")) > 0) {
      proto::Array arr = to_array(a, who);
      if (!nb::cast<bool>(a.attr("flags").attr("c_contiguous")))
        throw ArgumentError(who + ": the array must be C-contiguous (use np.ascontiguousarray)");
      buffers[i] = {arr.data, size_t(arr.nbytes()), arr.writable, arr.dtype};
      keep.push_back(nb::borrow(a));
      continue;
    }
    nb::object bytes;
    std::string dtype;
    if (nb::isinstance<nb::bytes>(a)) {
      bytes = nb::borrow(a);
    } else if (nb::isinstance<nb::bytearray>(a) || nb::isinstance<nb::memoryview>(a) ||
               nb::hasattr(a, "tobytes")) {  // numpy scalars, 0-d and structured scalars
      bytes = nb::hasattr(a, "tobytes") ? a.attr("tobytes")() : nb::module_::import_("builtins").attr("bytes")(a);
      if (nb::hasattr(a, "dtype") && nb::cast<std::string>(a.attr("dtype").attr("kind")) != "V")
        dtype = nb::cast<std::string>(a.attr("dtype").attr("name"));
    } else if (nb::isinstance<nb::bool_>(a) || nb::isinstance<nb::int_>(a) || nb::isinstance<nb::float_>(a)) {
      throw ArgumentTypeError(who + ": a plain Python " + nb::cast<std::string>(nb::handle(a.type()).attr("__name__")) +
                              " has no MSL type; pass a numpy scalar such as np.uint32(...) or np.float32(...)");
    } else {
      throw ArgumentTypeError(who + ": expected a numpy array, numpy scalar, bytes or None, got " +
                              nb::cast<std::string>(nb::handle(a.type()).attr("__name__")));
    }
    keep.push_back(bytes);
    buffers[i] = {const_cast<char*>(PyBytes_AsString(bytes.ptr())), size_t(PyBytes_Size(bytes.ptr())), false, dtype};
  }
  return buffers;
}

std::array<uint32_t, 3> size3(const std::vector<int64_t>& v, const char* name) {
  if (v.empty() || v.size() > 3) throw ArgumentTypeError(std::string(name) + " must have 1 to 3 dimensions");
  std::array<uint32_t, 3> out{1, 1, 1};
  for (size_t i = 0; i < v.size(); i++) {
    if (v[i] < 1 || v[i] > UINT32_MAX) throw ArgumentError(std::string(name) + " must be >= 1 in every dimension");
    out[i] = uint32_t(v[i]);
  }
  return out;
}

}  // namespace

void init_errors(nb::module_& m) {
  auto base = nb::exception<Error>(m, "AttentionProtoError", PyExc_RuntimeError);
  auto compile_error = nb::exception<CompileError>(m, "ShaderCompileError", base);
  nb::exception<ArchiveMissError>(m, "ArchiveMissError", compile_error);
  auto dispatch_error = nb::exception<DispatchError>(m, "DispatchError", base);
  nb::exception<DeadlockError>(m, "DeadlockError", dispatch_error);
  nb::exception<OutOfBoundsError>(m, "OutOfBoundsError", dispatch_error);
  static PyObject* limit = exception(m, "ResourceLimitError", {dispatch_error, PyExc_ValueError},
                                      "A device limit (threadgroup memory, threads per threadgroup) is exceeded.");
  static PyObject* unavailable = exception(m, "BackendUnavailableError", {base, PyExc_ValueError},
                                            "The requested backend does not exist or has no device here.");
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const LimitError& e) {
      PyErr_SetString(limit, e.what());
    } catch (const BackendUnavailable& e) {
      PyErr_SetString(unavailable, e.what());
    } catch (const ArgumentTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });
}

void init_runtime(nb::module_& m) {
  init_errors(m);

  nb::class_<DeviceInfo>(m, "DeviceInfo", "Facts of a backend's device (the CPU on the host backend).")
      .def_ro("backend", &DeviceInfo::backend)
      .def_ro("name", &DeviceInfo::name)
      .def_ro("family", &DeviceInfo::family)
      .def_ro("max_threadgroup_memory", &DeviceInfo::max_threadgroup_memory)
      .def_ro("simd_width", &DeviceInfo::simd_width)
      .def_ro("max_threads_per_threadgroup", &DeviceInfo::max_threads_per_threadgroup)
      .def_ro("compute_units", &DeviceInfo::compute_units)
      .def_ro("unified_memory", &DeviceInfo::unified_memory)
      .def_ro("extra", &DeviceInfo::extra)
      .def("as_dict", &device_dict, "The facts as a plain dict (what findings store as their `device`).")
      .def("__repr__", [](const DeviceInfo& d) {
        return repr_fields("DeviceInfo", std::vector<std::string>{"backend='" + d.backend + "'", "name='" + d.name + "'",
                                                                  "family='" + d.family + "'"});
      });

  nb::class_<ArgumentInfo>(m, "ArgumentInfo", "One parameter of a kernel as its source declares it.")
      .def_ro("kind", &ArgumentInfo::kind, "'buffer', 'threadgroup' or 'position'")
      .def_ro("index", &ArgumentInfo::index)
      .def_ro("name", &ArgumentInfo::name)
      .def_ro("type", &ArgumentInfo::type)
      .def_ro("element", &ArgumentInfo::element)
      .def_ro("dtype", &ArgumentInfo::dtype, "numpy dtype name of the element ('' when it has none)")
      .def_ro("writable", &ArgumentInfo::writable)
      .def("__repr__", [](const ArgumentInfo& a) {
        return "ArgumentInfo(" + a.kind + " " + std::to_string(a.index) + ": " + a.type + " " + a.name + ")";
      });

  nb::class_<PipelineInfo>(m, "PipelineInfo", "Facts of one built pipeline: limits, compile stages, arguments.")
      .def_ro("function", &PipelineInfo::function)
      .def_ro("key", &PipelineInfo::key, "the spec's key: function, constants, defines, linked functions, max threads")
      .def_ro("max_total_threads_per_threadgroup", &PipelineInfo::max_total_threads_per_threadgroup)
      .def_ro("thread_execution_width", &PipelineInfo::thread_execution_width)
      .def_ro("static_threadgroup_memory", &PipelineInfo::static_threadgroup_memory,
              "bytes the kernel declares (host: the most its runs used so far)")
      .def_ro("cache", &PipelineInfo::cache, "'memory', 'disk', 'archive' or 'compiled'")
      .def_ro("library_origin", &PipelineInfo::library_origin, "'source', 'metallib', 'memory' or 'disk'")
      .def_ro("library_seconds", &PipelineInfo::library_seconds)
      .def_ro("function_seconds", &PipelineInfo::function_seconds)
      .def_ro("pipeline_seconds", &PipelineInfo::pipeline_seconds)
      .def_prop_ro("compile_seconds", &PipelineInfo::compile_seconds, "the three stages together")
      .def_ro("arguments", &PipelineInfo::arguments)
      .def("__repr__", [](const PipelineInfo& p) { return "PipelineInfo(" + p.key + ", cache='" + p.cache + "')"; });

  nb::class_<proto::LaunchInfo>(m, "LaunchInfo", "One kernel launch of a call: pipeline key, geometry, memory.")
      .def_ro("function", &proto::LaunchInfo::function)
      .def_ro("key", &proto::LaunchInfo::key)
      .def_ro("grid", &proto::LaunchInfo::grid, "threadgroups per grid")
      .def_ro("threadgroup", &proto::LaunchInfo::threadgroup, "threads per threadgroup")
      .def_ro("threadgroup_memory", &proto::LaunchInfo::threadgroup_memory, "{[[threadgroup(n)]] index: bytes}")
      .def_prop_ro("threadgroup_bytes",
                   [](const proto::LaunchInfo& l) {
                     uint64_t total = 0;
                     for (const auto& [i, b] : l.threadgroup_memory) total += b;
                     return total;
                   })
      .def_ro("pipeline", &proto::LaunchInfo::pipeline, "PipelineInfo, or None in a plan without build")
      .def("__repr__", [](const proto::LaunchInfo& l) { return "LaunchInfo(" + l.key + ")"; });

  nb::class_<proto::CallResult>(m, "DispatchTiming",
                                "Timing of one call. `seconds` is GPU time (GPUEndTime - GPUStartTime) on Metal and "
                                "the wall time of the CPU emulation on the host backend, never an Apple-GPU number "
                                "there; `wall_seconds` is wall time on both (compare it with peers' wall times). "
                                "Both are per repetition.")
      .def_prop_ro("seconds", [](const proto::CallResult& r) { return r.timing.seconds; })
      .def_prop_ro("wall_seconds", [](const proto::CallResult& r) { return r.timing.wall_seconds; })
      .def_prop_ro("timer", [](const proto::CallResult& r) { return r.timing.timer; }, "'gpu' or 'wall'")
      .def_prop_ro("repeat", [](const proto::CallResult& r) { return r.timing.repeat; })
      .def_prop_ro("bytes_copied", [](const proto::CallResult& r) { return r.timing.bytes_copied; },
                   "bytes copied because memory could not be used in place")
      .def_prop_ro("buffers_copied", [](const proto::CallResult& r) { return r.timing.buffers_copied; })
      .def_ro("backend", &proto::CallResult::backend)
      .def_ro("launches", &proto::CallResult::launches)
      .def("__float__", [](const proto::CallResult& r) { return r.timing.seconds; })
      .def("__repr__", [](const proto::CallResult& r) {
        return "DispatchTiming(seconds=" + std::to_string(r.timing.seconds) + ", timer='" + r.timing.timer +
               "', backend='" + r.backend + "', repeat=" + std::to_string(r.timing.repeat) + ")";
      });

  m.def("backends", &available_backends,
        "Names of the backends usable here, best first. On Apple Silicon, raises BackendUnavailableError when no "
        "Metal device is found (APROTO_REQUIRE_METAL=0 allows the host backend alone).");
  m.def(
      "device_info", [](const std::string& backend) { return get_backend(backend).info(); }, "backend"_a = "",
      "Device facts of a backend ('' = the best one).");
  m.def(
      "configure",
      [](const std::string& include_dir, const std::string& zig, const std::string& shader_dir) {
        host::configure_compiler({include_dir, zig});
        proto::set_shader_dir(shader_dir);
      },
      "include_dir"_a, "zig"_a, "shader_dir"_a,
      "Tells the core where the host backend's metal_stdlib emulation, the ziglang compiler and the installed "
      "shaders are (the package does this at import).");
  m.def("host_compiler", &host::compiler_description, "The host backend's compiler; raises ShaderCompileError without one.");

  m.def(
      "allocate",
      [](size_t nbytes) {
        void* data = allocate_region(nbytes);
        nb::capsule owner(data, [](void* p) noexcept { free_region(p); });
        const size_t shape[1] = {std::max<size_t>(1, (nbytes + kAllocationGranule - 1) / kAllocationGranule) *
                                 kAllocationGranule};
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(data, 1, shape, owner);
      },
      "nbytes"_a,
      "A zero-filled uint8 array over an mmap region of its own: at least `nbytes` long, whole 16 KB pages, "
      "starting on a page. The memory the Metal backend wraps without a copy (attention_proto.empty slices it).");
  m.def(
      "in_package_memory",
      [](nb::handle array) {
        proto::Array a = to_array(array, "array");
        return find_region(a.data, a.nbytes(), nullptr) != nullptr;
      },
      "array"_a, "True when the array's bytes lie in one region from allocate() (wrapped by Metal without a copy "
      "when it also starts on a page).");

  nb::class_<BoundPipeline>(m, "Pipeline", "A compiled kernel specialisation on one backend.")
      .def_prop_ro("info", [](const BoundPipeline& p) { return p.pipeline->info(); }, "Its PipelineInfo.")
      .def_ro("backend", &BoundPipeline::backend);

  m.def(
      "pipeline",
      [](const std::string& text, const std::string& path, const std::vector<std::string>& include_dirs,
         const std::string& function, const nb::dict& constants, const std::map<std::string, std::string>& defines,
         const std::vector<std::string>& linked_functions, uint32_t max_threads, const std::string& backend,
         const std::vector<std::string>& table_functions, const Libraries& libraries, const Graphs& stitched) {
        PipelineSpec spec{function, to_constants(constants), defines, linked_functions, max_threads};
        set_links(spec, table_functions, libraries, stitched, include_dirs);
        Backend& b = get_backend(backend);
        Source source{text, path, include_dirs};
        nb::gil_scoped_release release;  // compiling takes seconds
        return BoundPipeline{b.info().backend, b.pipeline(source, spec)};
      },
      "source"_a, "path"_a, "include_dirs"_a, "function"_a, "constants"_a, "defines"_a, "linked_functions"_a,
      "max_threads_per_threadgroup"_a, "backend"_a = "", "table_functions"_a = std::vector<std::string>{},
      "libraries"_a = Libraries{}, "stitched"_a = Graphs{},
      "Builds (or fetches from the caches) the pipeline of `function` specialised by `constants` (keys: constant "
      "names, or ints for [[function_constant(i)]] indices) and preprocessor `defines`, linking `linked_functions` "
      "(they resolve `extern` declarations) and `table_functions` (for visible_function_table arguments) from the "
      "source, `libraries` ((text, path) pairs, compiled on their own) and `stitched` graphs ((name, [(function, "
      "arguments)]): an argument >= 0 is an input, -1 - n the result of node n; the last node is the output).");

  m.def(
      "dispatch",
      [](BoundPipeline& p, const nb::list& args, const std::vector<int64_t>& grid, const std::vector<int64_t>& threadgroup,
         const std::map<uint32_t, uint64_t>& threadgroup_memory, bool checked, uint32_t repeat,
         const std::map<uint32_t, std::vector<std::string>>& function_tables) {
        std::vector<nb::object> keep;  // holds scalars' bytes alive across the dispatch
        Dispatch step{p.pipeline, to_buffers(args, keep), {}};
        step.args.function_tables = function_tables;
        step.args.grid = size3(grid, "grid");
        step.args.threadgroup = size3(threadgroup, "threadgroup");
        step.args.threadgroup_memory = threadgroup_memory;
        step.args.checked = checked;
        if (repeat < 1) throw ArgumentError("repeat must be >= 1");
        Backend& b = get_backend(p.backend);
        proto::CallResult r;
        {
          nb::gil_scoped_release release;
          r.timing = b.dispatch({step}, repeat);
        }
        r.backend = p.backend;
        proto::LaunchInfo l;
        l.pipeline = p.pipeline->info();
        l.function = l.pipeline->function;
        l.key = l.pipeline->key;
        l.grid = step.args.grid;
        l.threadgroup = step.args.threadgroup;
        l.threadgroup_memory = threadgroup_memory;
        r.launches.push_back(l);
        return r;
      },
      "pipeline"_a, "args"_a, "grid"_a, "threadgroup"_a, "threadgroup_memory"_a, "checked"_a = false, "repeat"_a = 1,
      "function_tables"_a = std::map<uint32_t, std::vector<std::string>>{},
      "Runs one dispatch `repeat` times and waits. `args` bind to [[buffer(0)]], [[buffer(1)]], ...: numpy arrays in "
      "place (dtype checked against the parameter's element type), numpy scalars and bytes as constant data, None "
      "unbound. `grid` counts threadgroups. `function_tables` fills visible_function_table arguments: [[buffer(n)]] -> "
      "table functions of the pipeline, in table order.");
}

}  // namespace aproto::bindings
