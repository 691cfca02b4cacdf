// An MTL::BinaryArchive on disk: the GPU binaries of compute pipelines, so a later process can build
// them without running the backend compiler (prototype 4 measures what that saves).
#pragma once
#include <string>

#include <Foundation/Foundation.hpp>
#include <Metal/Metal.hpp>

namespace aproto::metal {

class BinaryArchive {
 public:
  // Opens the archive stored at `path`, or starts an empty one when the file does not exist yet
  // (serialize() writes it). Throws CompileError when the file exists but Metal cannot read it
  // (e.g. written by another OS version or GPU).
  BinaryArchive(MTL::Device* device, std::string path);

  const std::string& path() const { return path_; }
  bool loaded_from_file() const { return loaded_; }

  // Compiles `function` (already specialised with its constants) and adds its GPU binary. Throws CompileError.
  void add(MTL::Function* function);

  // Builds the pipeline of `function` from the archive alone (MTL::PipelineOptionFailOnBinaryArchiveMiss).
  // Returns a pipeline the caller owns, or nullptr on a miss with the driver's reason in `miss_reason`.
  MTL::ComputePipelineState* build(MTL::Function* function, std::string& miss_reason);

  // Writes the archive to path() (through a temporary file renamed over it). Throws Error.
  void serialize();

 private:
  // add() and build() must use the same descriptor settings: they are part of the archive's lookup key.
  NS::SharedPtr<MTL::ComputePipelineDescriptor> descriptor(MTL::Function* function, bool with_archive) const;

  MTL::Device* device_;  // not owned: the backend outlives its archive
  std::string path_;
  bool loaded_ = false;
  NS::SharedPtr<MTL::BinaryArchive> archive_;
};

}  // namespace aproto::metal
