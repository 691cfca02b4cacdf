// attention_proto._core: the thin C++ core exposed to Python. One init_<area>() per binding file.
#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace aproto::bindings {
void init_runtime(nb::module_& m);
void init_metal(nb::module_& m);
void init_protos(nb::module_& m);
void init_translate(nb::module_& m);
}  // namespace aproto::bindings

NB_MODULE(_core, m) {
  m.doc() = "attention_proto's C++ core: backends (host = MSL on the CPU, metal = Apple GPU), pipelines, dispatch, "
            "and one entry point per prototype.";
  aproto::bindings::init_runtime(m);
  aproto::bindings::init_metal(m);
  aproto::bindings::init_protos(m);
  aproto::bindings::init_translate(m);
}
