"""What an image is and where it comes from: dataset specs (torch-free), loaders, class-folder
trees."""
