// What both pages need: finding an element, and the message of an API error ({"detail": "..."}).
"use strict";

const $ = (id) => document.getElementById(id);

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
  }
}
