/*
 * Checks plugins/msda/msdaRegistryAbi.h against the IPluginRegistry of the TensorRT headers this is compiled with:
 * every method the auto-registering library may call sits in the same vtable slot in both (Itanium C++ ABI: a
 * pointer to a virtual member function holds 1 + the slot's byte offset). TensorRT 10 headers are checked against
 * RegistryAbi10, TensorRT 11 headers against RegistryAbi11. Prints one line per method; exit status 0 when all agree.
 */
#include "msdaRegistryAbi.h"

#include <cstdio>
#include <cstring>

namespace
{

template <typename MemberFunction>
long slotOf(MemberFunction function)
{
    struct Representation
    {
        long pointer;
        long adjustment;
    } representation{};
    static_assert(sizeof(function) == sizeof(representation), "not the Itanium C++ ABI");
    std::memcpy(&representation, &function, sizeof(representation));
    return (representation.pointer - 1) / static_cast<long>(sizeof(void*));
}

int gFailures = 0;

template <typename Ours, typename Theirs>
void expectSameSlot(char const* method, Ours ours, Theirs theirs)
{
    long const mine = slotOf(ours);
    long const tensorrt = slotOf(theirs);
    std::printf("%s %s slot %ld (TensorRT headers: %ld)\n", mine == tensorrt ? "ok" : "MISMATCH", method, mine, tensorrt);
    gFailures += mine == tensorrt ? 0 : 1;
}

} // namespace

int main()
{
    using nvinfer1::IPluginCreatorInterface;
    using nvinfer1::IPluginRegistry;
#if NV_TENSORRT_MAJOR >= 11
    using Ours = detr_deploy::msda::RegistryAbi11;
    std::printf("TensorRT %d headers: RegistryAbi11\n", NV_TENSORRT_MAJOR);
#else
    using Ours = detr_deploy::msda::RegistryAbi10;
    std::printf("TensorRT %d headers: RegistryAbi10\n", NV_TENSORRT_MAJOR);
    // The deprecated methods are what this checks: their slots come first in TensorRT 10.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    expectSameSlot("registerCreator(IPluginCreator&)", &Ours::deprecatedRegisterCreator,
        static_cast<bool (IPluginRegistry::*)(nvinfer1::IPluginCreator&, char const* const) noexcept>(
            &IPluginRegistry::registerCreator));
    expectSameSlot("getPluginCreatorList", &Ours::deprecatedGetPluginCreatorList, &IPluginRegistry::getPluginCreatorList);
    expectSameSlot("getPluginCreator", &Ours::deprecatedGetPluginCreator, &IPluginRegistry::getPluginCreator);
    expectSameSlot("deregisterCreator(IPluginCreator const&)", &Ours::deprecatedDeregisterCreator,
        static_cast<bool (IPluginRegistry::*)(nvinfer1::IPluginCreator const&) noexcept>(
            &IPluginRegistry::deregisterCreator));
#pragma GCC diagnostic pop
#endif
    expectSameSlot("setErrorRecorder", &Ours::setErrorRecorder, &IPluginRegistry::setErrorRecorder);
    expectSameSlot("getErrorRecorder", &Ours::getErrorRecorder, &IPluginRegistry::getErrorRecorder);
    expectSameSlot("isParentSearchEnabled", &Ours::isParentSearchEnabled, &IPluginRegistry::isParentSearchEnabled);
    expectSameSlot("setParentSearchEnabled", &Ours::setParentSearchEnabled, &IPluginRegistry::setParentSearchEnabled);
    expectSameSlot("loadLibrary", &Ours::loadLibrary, &IPluginRegistry::loadLibrary);
    expectSameSlot("deregisterLibrary", &Ours::deregisterLibrary, &IPluginRegistry::deregisterLibrary);
    expectSameSlot("registerCreator", &Ours::registerCreator,
        static_cast<bool (IPluginRegistry::*)(IPluginCreatorInterface&, char const* const) noexcept>(
            &IPluginRegistry::registerCreator));
    expectSameSlot("getAllCreators", &Ours::getAllCreators, &IPluginRegistry::getAllCreators);
    expectSameSlot("getCreator", &Ours::getCreator, &IPluginRegistry::getCreator);
    return gFailures == 0 ? 0 : 1;
}
