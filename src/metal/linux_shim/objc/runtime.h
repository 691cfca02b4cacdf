// Linux compile-check shim only (tests/test_metal_compile.py); never used by a macOS build.
// The Objective-C runtime names metal-cpp uses; NS::Object derives from objc_object, so it is complete.
#pragma once
typedef struct objc_selector* SEL;
typedef struct objc_class* Class;
struct objc_object { Class isa; };
typedef struct objc_object Protocol;
extern "C" SEL sel_registerName(const char* name);
extern "C" Class objc_lookUpClass(const char* name);
extern "C" Protocol* objc_getProtocol(const char* name);
