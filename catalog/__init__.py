"""Scene catalogs: EnMAP L2A products from a STAC API, a static STAC file or a local archive."""
