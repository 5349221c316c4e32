"""The operator page's static files (HTML, CSS, JS), shipped as package data and served by genreid.service.routes.ui:
no front-end build step, nothing fetched from outside the server."""
