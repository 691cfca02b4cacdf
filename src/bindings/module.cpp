// attention_proto._core: the thin C++ core exposed to Python. One init_<area>() per binding file.
#include <nanobind/nanobind.h>

namespace nb = nanobind;

void init_runtime(nb::module_& m);
void init_metal(nb::module_& m);
void init_flash_attention(nb::module_& m);
void init_translate(nb::module_& m);

NB_MODULE(_core, m) {
  m.doc() = "attention_proto's C++ core: backends (host = MSL on the CPU, metal = Apple GPU), pipelines, dispatch.";
  init_runtime(m);
  init_metal(m);
  init_flash_attention(m);
  init_translate(m);
}
