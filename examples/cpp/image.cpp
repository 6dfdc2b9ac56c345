#include "image.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

#if DETR_DEPLOY_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#endif

namespace detr_example
{
namespace
{

// Next whitespace-separated token of a PPM header, skipping '#' comments.
std::string headerToken(std::istream& in)
{
    std::string token;
    char c;
    while (in.get(c))
    {
        if (c == '#')
        {
            std::string comment;
            std::getline(in, comment);
        }
        else if (std::isspace(static_cast<unsigned char>(c)))
        {
            if (!token.empty())
            {
                return token;
            }
        }
        else
        {
            token.push_back(c);
        }
    }
    return token;
}

Image readPpm(std::string const& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
    {
        throw std::runtime_error("cannot open " + path);
    }
    if (headerToken(in) != "P6")
    {
        throw std::runtime_error(path + " is not a binary PPM (P6); build with OpenCV for other formats");
    }
    Image image;
    image.width = std::stoi(headerToken(in));
    image.height = std::stoi(headerToken(in));
    if (std::stoi(headerToken(in)) != 255 || image.width <= 0 || image.height <= 0)
    {
        throw std::runtime_error(path + ": only 8-bit PPM images are supported");
    }
    image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
    in.read(reinterpret_cast<char*>(image.rgb.data()), static_cast<std::streamsize>(image.rgb.size()));
    if (in.gcount() != static_cast<std::streamsize>(image.rgb.size()))
    {
        throw std::runtime_error(path + " is truncated");
    }
    return image;
}

} // namespace

Image readImage(std::string const& path)
{
#if DETR_DEPLOY_WITH_OPENCV
    cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
    if (!bgr.empty())
    {
        Image image;
        image.height = bgr.rows;
        image.width = bgr.cols;
        image.rgb.resize(static_cast<size_t>(image.width) * image.height * 3);
        for (int y = 0; y < bgr.rows; ++y)
        {
            for (int x = 0; x < bgr.cols; ++x)
            {
                cv::Vec3b const pixel = bgr.at<cv::Vec3b>(y, x);
                uint8_t* out = &image.rgb[(static_cast<size_t>(y) * image.width + x) * 3];
                out[0] = pixel[2];
                out[1] = pixel[1];
                out[2] = pixel[0];
            }
        }
        return image;
    }
#endif
    return readPpm(path);
}

void resizedSize(int height, int width, int shorterSide, int maxSize, int& outHeight, int& outWidth)
{
    double const shortSide = std::min(height, width);
    double const longSide = std::max(height, width);
    if (longSide / shortSide * shorterSide > maxSize)
    {
        shorterSide = static_cast<int>(std::lround(maxSize * shortSide / longSide));
    }
    if ((width <= height && width == shorterSide) || (height <= width && height == shorterSide))
    {
        outHeight = height;
        outWidth = width;
    }
    else if (width < height)
    {
        outWidth = shorterSide;
        outHeight = static_cast<int>(static_cast<double>(shorterSide) * height / width);
    }
    else
    {
        outHeight = shorterSide;
        outWidth = static_cast<int>(static_cast<double>(shorterSide) * width / height);
    }
}

std::vector<float> preprocess(Image const& image, int outHeight, int outWidth)
{
    static float const kMean[3] = {0.485F, 0.456F, 0.406F};
    static float const kStd[3] = {0.229F, 0.224F, 0.225F};
    std::vector<float> planes(static_cast<size_t>(3) * outHeight * outWidth);
    float const scaleY = static_cast<float>(image.height) / outHeight;
    float const scaleX = static_cast<float>(image.width) / outWidth;
    for (int y = 0; y < outHeight; ++y)
    {
        float const sourceY = std::clamp((y + 0.5F) * scaleY - 0.5F, 0.0F, static_cast<float>(image.height - 1));
        int const y0 = static_cast<int>(sourceY);
        int const y1 = std::min(y0 + 1, image.height - 1);
        float const wy = sourceY - y0;
        for (int x = 0; x < outWidth; ++x)
        {
            float const sourceX = std::clamp((x + 0.5F) * scaleX - 0.5F, 0.0F, static_cast<float>(image.width - 1));
            int const x0 = static_cast<int>(sourceX);
            int const x1 = std::min(x0 + 1, image.width - 1);
            float const wx = sourceX - x0;
            for (int c = 0; c < 3; ++c)
            {
                auto at = [&](int yy, int xx) { return image.rgb[(static_cast<size_t>(yy) * image.width + xx) * 3 + c]; };
                float const top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx;
                float const bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx;
                float const value = (top * (1 - wy) + bottom * wy) / 255.0F;
                planes[(static_cast<size_t>(c) * outHeight + y) * outWidth + x] = (value - kMean[c]) / kStd[c];
            }
        }
    }
    return planes;
}

} // namespace detr_example
