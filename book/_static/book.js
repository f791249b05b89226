// Search from a copy of the site opened as files (file://): Sphinx fetches each hit's page to show a
// summary, which browsers refuse for file:// pages (a CORS error per hit). There, list the hits without
// summaries; over http the summaries stay.
if (window.location.protocol === "file:" && typeof DOCUMENTATION_OPTIONS !== "undefined") {
  DOCUMENTATION_OPTIONS.SHOW_SEARCH_SUMMARY = false;
}
