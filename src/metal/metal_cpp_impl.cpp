// metal-cpp is header-only: the *_PRIVATE_IMPLEMENTATION macros make these headers emit the Objective-C
// selector and class tables. They must be defined in exactly one translation unit of the module: this one.
// QuartzCore (CA_PRIVATE_IMPLEMENTATION) is left out on purpose: the backend is compute-only and uses no
// CAMetalLayer or drawables.
#define NS_PRIVATE_IMPLEMENTATION
#define MTL_PRIVATE_IMPLEMENTATION
#include <Foundation/Foundation.hpp>
#include <Metal/Metal.hpp>
