// KaTeX rendering for pymdownx.arithmatex (generic mode): \( \) inline, \[ \] display.
// KaTeX is bundled with the docs (docs/vendor/katex), so formulas render offline.
// Material's document$ fires on the first load and after every instant-navigation swap.
document$.subscribe(() => {
  for (const element of document.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  }
});
