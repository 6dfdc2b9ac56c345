/*
 * IPluginRegistry's vtable as the TensorRT libraries lay it out, independent of the headers this is compiled with:
 * TensorRT 10 declares three deprecated methods first, TensorRT 11 and TensorRT-RTX 1.x removed them, so a call
 * through one version's IPluginRegistry reaches a different function in the other. msdaAutoRegister.cpp picks the
 * layout of the library it finds in the process; tests/plugins/cpp/registryAbiCheck.cpp checks these slots against
 * the IPluginRegistry of the TensorRT headers it is compiled with.
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>

namespace detr_deploy
{
namespace msda
{

// IPluginRegistry's virtual functions up to getCreator, in vtable order (Itanium C++ ABI: declaration order, a
// virtual destructor takes two slots). Only the slots we call must have their real signatures; we never delete one.
// Outside the anonymous namespace on purpose: there GCC knows every class derived from them (none) and devirtualizes
// the calls to __cxa_pure_virtual.

//! TensorRT 10.x (include/NvInferRuntimeCommon.h of 10.0 to 10.13).
class RegistryAbi10
{
public:
    virtual bool deprecatedRegisterCreator(void* creator, char const* pluginNamespace) noexcept = 0;
    virtual void* const* deprecatedGetPluginCreatorList(int32_t* numCreators) const noexcept = 0;
    virtual void* deprecatedGetPluginCreator(char const* name, char const* version, char const* ns) noexcept = 0;
    virtual ~RegistryAbi10() noexcept = default;
    virtual void setErrorRecorder(void* recorder) noexcept = 0;
    virtual void* getErrorRecorder() const noexcept = 0;
    virtual bool deprecatedDeregisterCreator(void const* creator) noexcept = 0;
    virtual bool isParentSearchEnabled() const = 0;
    virtual void setParentSearchEnabled(bool enabled) = 0;
    virtual void* loadLibrary(char const* pluginPath) noexcept = 0;
    virtual void deregisterLibrary(void* handle) noexcept = 0;
    virtual bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, char const* pluginNamespace) noexcept = 0;
    virtual nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* numCreators) const noexcept = 0;
    virtual nvinfer1::IPluginCreatorInterface* getCreator(char const* name, char const* version, char const* ns) noexcept = 0;
};

//! TensorRT 11 and TensorRT-RTX 1.x: the deprecated methods are gone.
class RegistryAbi11
{
public:
    virtual ~RegistryAbi11() noexcept = default;
    virtual void setErrorRecorder(void* recorder) noexcept = 0;
    virtual void* getErrorRecorder() const noexcept = 0;
    virtual bool isParentSearchEnabled() const = 0;
    virtual void setParentSearchEnabled(bool enabled) = 0;
    virtual void* loadLibrary(char const* pluginPath) noexcept = 0;
    virtual void deregisterLibrary(void* handle) noexcept = 0;
    virtual bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, char const* pluginNamespace) noexcept = 0;
    virtual nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* numCreators) const noexcept = 0;
    virtual nvinfer1::IPluginCreatorInterface* getCreator(char const* name, char const* version, char const* ns) noexcept = 0;
};

} // namespace msda
} // namespace detr_deploy
