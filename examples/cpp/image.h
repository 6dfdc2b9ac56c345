// Reading an image and preparing the network input as detr_deploy/preprocessing.py does: shorter side
// 800, longer side at most 1333, bilinear resize, ImageNet normalization, planar RGB float32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace detr_example
{

struct Image
{
    int height = 0;
    int width = 0;
    std::vector<uint8_t> rgb; // height * width * 3, interleaved RGB
};

// Binary PPM (P6, maxval 255) always; any format OpenCV reads when built with it. Throws std::runtime_error.
Image readImage(std::string const& path);

// (height, width) after the official resize (DETR's get_size_with_aspect_ratio).
void resizedSize(int height, int width, int shorterSide, int maxSize, int& outHeight, int& outWidth);

// uint8 RGB -> float32 [3, outHeight, outWidth], bilinear with half-pixel centers, ImageNet-normalized. (PIL
// widens its filter when shrinking, so values differ slightly from the Python side; detections agree.)
std::vector<float> preprocess(Image const& image, int outHeight, int outWidth);

} // namespace detr_example
