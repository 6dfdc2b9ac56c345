/*
 * libdetr_deploy_plugins_autoreg.so: registers the creators of libdetr_deploy_plugins.so with the plugin registry of
 * the TensorRT library already loaded in the process, when it is loaded itself.
 *
 * Why a second library: TensorRT 10's plugin-library interface (getCreators / setLoggerFinder) is used only by
 * runners that call IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, get_plugin_registry().load_library).
 * Triton's tensorrt backend, trtexec --plugins, DeepStream and LD_PRELOAD only dlopen() a library and expect it to
 * register its creators while loading (what REGISTER_TENSORRT_PLUGIN does). This library is that static initializer
 * and nothing else: the plugin itself (glue, launcher, kernels) stays in libdetr_deploy_plugins.so, which this one
 * needs (DT_NEEDED, found through RUNPATH $ORIGIN), so an engine's recorded plugin library is still the one that runs.
 *
 * Not registering twice: a creator of the same name, version and namespace already in the registry (the plugin
 * library loaded through loadLibrary first, or another copy of this library) is left as it is.
 *
 * Which TensorRT: neither library links against one. The registry comes from the TensorRT library the process has
 * loaded (Triton loads libnvinfer before it dlopens plugins), found by soname with RTLD_NOLOAD: a library loaded
 * RTLD_LOCAL (Triton's backends, Python extension modules) is invisible to dlsym(RTLD_DEFAULT, ...) but not to that.
 * IPluginRegistry's vtable differs between TensorRT 10 (three deprecated methods first) and TensorRT 11 / TensorRT-RTX,
 * so the calls go through the layout of the library found (RegistryAbi10 / RegistryAbi11 below), not through the
 * headers this was compiled with.
 */
#include "msdaContract.h"
#include "msdaRegistryAbi.h"

#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <exception>
#include <string>

using namespace nvinfer1;

// The plugin library's entry points (libdetr_deploy_plugins.so exports exactly these).
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(ILoggerFinder* finder);

namespace detr_deploy
{
namespace msda
{
namespace
{

//! The TensorRT libraries we know the registry layout of, by soname; the first one loaded in the process is used.
struct KnownLibrary
{
    char const* soname;
    int layout; // 10 or 11
};

constexpr KnownLibrary kKNOWN_LIBRARIES[] = {
    {"libnvinfer.so.10", 10},
    {"libnvinfer.so.11", 11},
    {"libtensorrt_rtx.so.1", 11},
};

using GetPluginRegistry = void* (*) () noexcept;
using GetLogger = ILogger* (*) () noexcept;

//! Hands the plugin library TensorRT's global logger (getLogger()), since no loadLibrary call gives it a finder.
class GlobalLoggerFinder final : public ILoggerFinder
{
public:
    void set(GetLogger getLogger) noexcept
    {
        mGetLogger = getLogger;
    }

    ILogger* findLogger() noexcept override
    {
        return mGetLogger != nullptr ? mGetLogger() : nullptr;
    }

private:
    GetLogger mGetLogger{nullptr};
};

GlobalLoggerFinder gLoggerFinder;

template <typename Registry>
std::string registerInto(Registry* registry, char const* soname)
{
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    if (registry->getCreator(kPLUGIN_NAME, kPLUGIN_VERSION, kPLUGIN_NAMESPACE) != nullptr)
    {
        return std::string("already registered in ") + soname + ": left as it was";
    }
    for (int32_t i = 0; i < nbCreators; ++i)
    {
        if (!registry->registerCreator(*creators[i], kPLUGIN_NAMESPACE))
        {
            return std::string("the registry of ") + soname + " refused the creator";
        }
    }
    return std::string("registered in ") + soname;
}

std::string registerCreators()
{
    for (KnownLibrary const& library : kKNOWN_LIBRARIES)
    {
        void* handle = dlopen(library.soname, RTLD_NOW | RTLD_NOLOAD);
        if (handle == nullptr)
        {
            continue;
        }
        auto getRegistry = reinterpret_cast<GetPluginRegistry>(dlsym(handle, "getPluginRegistry"));
        auto getLogger = reinterpret_cast<GetLogger>(dlsym(handle, "getLogger"));
        void* registry = getRegistry != nullptr ? getRegistry() : nullptr;
        // Our reference keeps TensorRT loaded as long as we are (this library is never unloaded: -z nodelete).
        if (registry == nullptr)
        {
            return std::string(library.soname) + " has no plugin registry (getPluginRegistry)";
        }
        std::string const outcome = library.layout == 10
            ? registerInto(static_cast<RegistryAbi10*>(registry), library.soname)
            : registerInto(static_cast<RegistryAbi11*>(registry), library.soname);
        if (outcome.rfind("registered", 0) == 0)
        {
            // Only when the creator is ours to serve: a loadLibrary call that registered it first set its finder.
            gLoggerFinder.set(getLogger);
            setLoggerFinder(&gLoggerFinder);
        }
        return outcome;
    }
    return "no TensorRT library (libnvinfer.so.10, libnvinfer.so.11, libtensorrt_rtx.so.1) is loaded in this "
           "process: load TensorRT before this library, or give libdetr_deploy_plugins.so to "
           "IPluginRegistry::loadLibrary";
}

//! The static initializer (a C++ static object rather than __attribute__((constructor)): its order against the
//! statics above is then defined). Nothing may escape it: an exception here would terminate the loading process.
struct Registration
{
    Registration() noexcept
    {
        try
        {
            outcome = registerCreators();
        }
        catch (std::exception const& e)
        {
            outcome = std::string("registration threw: ") + e.what();
        }
        catch (...)
        {
            outcome = "registration threw an exception of unknown type";
        }
        if (outcome.rfind("registered", 0) != 0 && outcome.rfind("already", 0) != 0)
        {
            // No logger to tell (TensorRT is absent or refused us): stderr is the only channel left at load time.
            std::fprintf(stderr, "libdetr_deploy_plugins_autoreg.so: %s\n", outcome.c_str());
        }
    }

    //! What loading did, one line (detr_deploy_plugin_registration() returns it).
    std::string outcome;
};

Registration const gRegistration;

} // namespace
} // namespace msda
} // namespace detr_deploy

//! One line saying what loading this library did: "registered in <soname>", "already registered in <soname>: ...",
//! or why nothing was registered.
extern "C" __attribute__((visibility("default"))) char const* detr_deploy_plugin_registration()
{
    return detr_deploy::msda::gRegistration.outcome.c_str();
}
