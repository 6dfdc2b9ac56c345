// detr_detect ENGINE IMAGE [--plugins LIB] [--threshold 0.5]
//
// A service's view of a detr_deploy engine: load our plugin library, deserialize the engine, preprocess an image as
// the Python side does, run one inference on a CUDA stream, decode the detections (the official post-processing)
// and print them. Class names and the score activation come from the engine's sidecar, ENGINE.json.

#include "image.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace
{

class Logger : public nvinfer1::ILogger
{
    void log(Severity severity, char const* message) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << "[TensorRT] " << message << "\n";
        }
    }
};

void checkCuda(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
    }
}

std::string readText(std::string const& path)
{
    std::ifstream in(path);
    if (!in)
    {
        throw std::runtime_error("cannot read " + path + " (engines built by 'cli.py build-engine' have one)");
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

// The string value of "key" in the sidecar's JSON (enough for its flat metadata strings, escapes kept).
std::string jsonString(std::string const& json, std::string const& key)
{
    std::string const needle = "\"" + key + "\": \"";
    size_t start = json.find(needle);
    if (start == std::string::npos)
    {
        return "";
    }
    start += needle.size();
    size_t end = start;
    while (end < json.size() && !(json[end] == '"' && json[end - 1] != '\\'))
    {
        ++end;
    }
    return json.substr(start, end - start);
}

// detr_deploy.class_names is a JSON list stored as a string: ["N/A", "person", ...] with escaped quotes.
std::vector<std::string> classNames(std::string const& escapedList)
{
    std::vector<std::string> names;
    std::string const quote = "\\\"";
    size_t position = escapedList.find(quote);
    while (position != std::string::npos)
    {
        size_t const end = escapedList.find(quote, position + quote.size());
        if (end == std::string::npos)
        {
            break;
        }
        names.push_back(escapedList.substr(position + quote.size(), end - position - quote.size()));
        position = escapedList.find(quote, end + quote.size());
    }
    return names;
}

struct Detection
{
    float score;
    int label;
    float box[4]; // x0, y0, x1, y1 in pixels of the original image
};

// The official post-processing: softmax + best real class per query (DETR), or the top 100 (query, class) sigmoid
// scores (Deformable DETR); boxes (cx, cy, w, h) in 0..1 scaled to the original image.
std::vector<Detection> decode(std::vector<float> const& logits, std::vector<float> const& boxes, int queries,
    int classes, bool sigmoid, float threshold, int height, int width)
{
    std::vector<Detection> found;
    auto add = [&](int query, int label, float score) {
        float const* b = &boxes[static_cast<size_t>(query) * 4];
        found.push_back({score, label,
            {(b[0] - b[2] / 2) * width, (b[1] - b[3] / 2) * height, (b[0] + b[2] / 2) * width,
                (b[1] + b[3] / 2) * height}});
    };
    if (sigmoid)
    {
        std::vector<int> order(static_cast<size_t>(queries) * classes);
        std::iota(order.begin(), order.end(), 0);
        int const keep = std::min<int>(100, static_cast<int>(order.size()));
        std::partial_sort(order.begin(), order.begin() + keep, order.end(),
            [&](int a, int b) { return logits[a] > logits[b]; });
        for (int i = 0; i < keep; ++i)
        {
            float const score = 1.0F / (1.0F + std::exp(-logits[order[i]]));
            if (score >= threshold)
            {
                add(order[i] / classes, order[i] % classes, score);
            }
        }
        return found;
    }
    for (int query = 0; query < queries; ++query)
    {
        float const* row = &logits[static_cast<size_t>(query) * classes];
        float const top = *std::max_element(row, row + classes);
        float total = 0;
        for (int k = 0; k < classes; ++k)
        {
            total += std::exp(row[k] - top);
        }
        int const label = static_cast<int>(std::max_element(row, row + classes - 1) - row); // never "no object"
        float const score = std::exp(row[label] - top) / total;
        if (score >= threshold)
        {
            add(query, label, score);
        }
    }
    std::sort(found.begin(), found.end(), [](Detection const& a, Detection const& b) { return a.score > b.score; });
    return found;
}

int run(int argc, char** argv)
{
    if (argc < 3)
    {
        std::cerr << "usage: detr_detect ENGINE IMAGE [--plugins LIB] [--threshold 0.5]\n";
        return 2;
    }
    std::string const enginePath = argv[1];
    std::string const imagePath = argv[2];
    std::string plugins = "libdetr_deploy_plugins.so";
    float threshold = 0.5F;
    for (int i = 3; i + 1 < argc; i += 2)
    {
        std::string const option = argv[i];
        if (option == "--plugins")
        {
            plugins = argv[i + 1];
        }
        else if (option == "--threshold")
        {
            threshold = std::stof(argv[i + 1]);
        }
    }

    std::string const sidecar = readText(enginePath + ".json");
    bool const sigmoid = jsonString(sidecar, "detr_deploy.score_activation") == "sigmoid";
    std::vector<std::string> const names = classNames(jsonString(sidecar, "detr_deploy.class_names"));
    bool const needsPlugin = jsonString(sidecar, "msda_path") == "plugin";

    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (needsPlugin && runtime->getPluginRegistry().loadLibrary(plugins.c_str()) == nullptr)
    {
        throw std::runtime_error("cannot load the plugin library " + plugins + " (pass --plugins PATH)");
    }
    std::ifstream file(enginePath, std::ios::binary);
    std::vector<char> const blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine)
    {
        throw std::runtime_error("cannot deserialize " + enginePath + " (built for another TensorRT or GPU?)");
    }
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};

    detr_example::Image const image = detr_example::readImage(imagePath);
    int height = 0;
    int width = 0;
    detr_example::resizedSize(image.height, image.width, 800, 1333, height, width);
    std::vector<float> const input = detr_example::preprocess(image, height, width);

    cudaStream_t stream;
    checkCuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::vector<void*> buffers;
    auto deviceBuffer = [&](size_t bytes) {
        void* pointer = nullptr;
        checkCuda(cudaMalloc(&pointer, bytes), "cudaMalloc");
        buffers.push_back(pointer);
        return pointer;
    };
    void* images = deviceBuffer(input.size() * sizeof(float));
    checkCuda(cudaMemcpyAsync(images, input.data(), input.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
        "copy images");
    context->setInputShape("images", nvinfer1::Dims4{1, 3, height, width});
    context->setTensorAddress("images", images);
    if (engine->getTensorShape("padding_mask").nbDims == 3) // an export made with --padding-mask: nothing padded
    {
        void* mask = deviceBuffer(static_cast<size_t>(height) * width);
        checkCuda(cudaMemsetAsync(mask, 0, static_cast<size_t>(height) * width, stream), "clear padding_mask");
        context->setInputShape("padding_mask", nvinfer1::Dims3{1, height, width});
        context->setTensorAddress("padding_mask", mask);
    }
    std::vector<float> logits;
    std::vector<float> boxes;
    nvinfer1::Dims const logitShape = context->getTensorShape("pred_logits");
    logits.resize(static_cast<size_t>(logitShape.d[1]) * logitShape.d[2]);
    boxes.resize(static_cast<size_t>(logitShape.d[1]) * 4);
    void* logitsOnDevice = deviceBuffer(logits.size() * sizeof(float));
    void* boxesOnDevice = deviceBuffer(boxes.size() * sizeof(float));
    context->setTensorAddress("pred_logits", logitsOnDevice);
    context->setTensorAddress("pred_boxes", boxesOnDevice);
    if (engine->getTensorShape("pred_masks").nbDims == 4) // panoptic: masks are computed, not printed here
    {
        nvinfer1::Dims const maskShape = context->getTensorShape("pred_masks");
        context->setTensorAddress(
            "pred_masks", deviceBuffer(sizeof(float) * maskShape.d[1] * maskShape.d[2] * maskShape.d[3]));
    }
    if (!context->enqueueV3(stream))
    {
        throw std::runtime_error("enqueueV3 failed (TensorRT's message above says why)");
    }
    checkCuda(cudaMemcpyAsync(logits.data(), logitsOnDevice, logits.size() * sizeof(float), cudaMemcpyDeviceToHost,
                  stream),
        "copy pred_logits");
    checkCuda(cudaMemcpyAsync(boxes.data(), boxesOnDevice, boxes.size() * sizeof(float), cudaMemcpyDeviceToHost,
                  stream),
        "copy pred_boxes");
    checkCuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    for (void* pointer : buffers)
    {
        cudaFree(pointer);
    }
    cudaStreamDestroy(stream);

    std::vector<Detection> const detections = decode(logits, boxes, logitShape.d[1], logitShape.d[2], sigmoid,
        threshold, image.height, image.width);
    std::cout << imagePath << ": " << detections.size() << " detections (" << image.width << "x" << image.height
              << ", network input " << width << "x" << height << ")\n";
    for (Detection const& d : detections)
    {
        std::string const name = d.label < static_cast<int>(names.size()) ? names[d.label] : std::to_string(d.label);
        std::cout << "  " << name << " " << d.score << " [" << d.box[0] << ", " << d.box[1] << ", " << d.box[2]
                  << ", " << d.box[3] << "]\n";
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (std::exception const& error)
    {
        std::cerr << "error: " << error.what() << "\n";
        return 2;
    }
}
