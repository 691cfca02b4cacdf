// Small helpers shared by the Metal backend's translation units (internal to src/metal/).
#pragma once
#include <string>

#include <Foundation/Foundation.hpp>

namespace aproto::metal {

// An NS::String for a std::string. The result is autoreleased: use it inside an AutoreleasePoolScope.
inline NS::String* ns_string(const std::string& s) { return NS::String::string(s.c_str(), NS::UTF8StringEncoding); }

// The driver's message of an NSError (Metal reports compile errors as file:line: error: ... lines).
inline std::string error_text(const NS::Error* error) {
  if (!error) return "no error description from Metal";
  const NS::String* text = error->localizedDescription();
  return text ? text->utf8String() : "no error description from Metal";
}

// Every public call of the backend runs inside one pool, so the autoreleased objects metal-cpp hands
// out (strings, errors, command buffers, encoders) are freed at the end of the call on every thread,
// including threads the caller created without a run loop. Exceptions unwind through it.
class AutoreleasePoolScope {
 public:
  AutoreleasePoolScope() : pool_(NS::AutoreleasePool::alloc()->init()) {}
  ~AutoreleasePoolScope() { pool_->release(); }
  AutoreleasePoolScope(const AutoreleasePoolScope&) = delete;
  AutoreleasePoolScope& operator=(const AutoreleasePoolScope&) = delete;

 private:
  NS::AutoreleasePool* pool_;
};

}  // namespace aproto::metal
