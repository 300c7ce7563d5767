// A small Markdown renderer that builds DOM nodes: text only ever enters the page through
// textContent / createTextNode, never innerHTML, so model output cannot inject HTML or script.
// Supported: fenced code blocks (``` or ~~~, also unclosed while streaming), headings, bullet
// and numbered lists, block quotes, rules, paragraphs with line breaks, `code`, **bold**,
// *italic*, [links](http://...) and bare http(s) URLs. Links other than http(s) stay text.

const FENCE = /^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const LIST_ITEM = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
const INLINE = new RegExp(
  [
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1, 2: code span
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 3: bold
    "(?<![\\w*])\\*(?=[^\\s*])([^*]*?[^\\s*])\\*(?![\\w*])", // 4: italic
    "\\[([^\\]\\n]+)\\]\\(([^)\\s]+)\\)", // 5, 6: link
    "(https?:\\/\\/[^\\s<>()\\[\\]]*[^\\s<>()\\[\\].,;:!?'\"])", // 7: bare URL
  ].join("|"),
  "g",
);

function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** The URL when it is an absolute http(s) URL, else null (javascript:, data:, relative...). */
export function safeUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function link(label, href) {
  const anchor = element("a");
  anchor.href = href;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer nofollow";
  anchor.textContent = label;
  return anchor;
}

/** Append the inline Markdown of `text` (one line) to `parent`. */
function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    parent.append(document.createTextNode(text.slice(last, match.index)));
    last = match.index + match[0].length;
    if (match[1] !== undefined) {
      const code = element("code");
      code.textContent = match[2].replace(/^ (.*) $/, "$1");
      parent.append(code);
    } else if (match[3] !== undefined) {
      const strong = element("strong");
      appendInline(strong, match[3]);
      parent.append(strong);
    } else if (match[4] !== undefined) {
      const emphasis = element("em");
      appendInline(emphasis, match[4]);
      parent.append(emphasis);
    } else if (match[5] !== undefined) {
      const href = safeUrl(match[6]);
      parent.append(href ? link(match[5], href) : document.createTextNode(match[0]));
    } else {
      const href = safeUrl(match[7]);
      parent.append(href ? link(match[7], href) : document.createTextNode(match[7]));
    }
  }
  parent.append(document.createTextNode(text.slice(last)));
}

/** Append lines as inline Markdown separated by <br>. */
function appendLines(parent, lines) {
  lines.forEach((line, index) => {
    if (index > 0) parent.append(element("br"));
    appendInline(parent, line);
  });
}

function codeBlock(code, language) {
  const pre = element("pre");
  const block = element("code", language ? `language-${language}` : "");
  block.textContent = code;
  pre.append(block);
  if (language) pre.dataset.language = language;
  return pre;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || LIST_ITEM.test(line) || QUOTE.test(line)
    || RULE.test(line);
}

/** Parse a list starting at lines[start]; returns [element, next index]. */
function parseList(lines, start) {
  const ordered = /^\s*\d/.test(lines[start]);
  const list = element(ordered ? "ol" : "ul");
  const first = lines[start].match(LIST_ITEM)[1];
  if (ordered && parseInt(first, 10) !== 1) list.start = parseInt(first, 10);
  let index = start;
  let item = null;
  let itemLines = [];
  const flush = () => {
    if (item) appendLines(item, itemLines);
  };
  while (index < lines.length) {
    const line = lines[index];
    const match = line.match(LIST_ITEM);
    if (match && /^\s*\d/.test(line) === ordered) {
      flush();
      item = element("li");
      list.append(item);
      itemLines = [match[2]];
    } else if (line.trim() && /^\s+/.test(line) && !FENCE.test(line)) {
      itemLines.push(line.trim()); // an indented continuation of the item
    } else {
      break;
    }
    index += 1;
  }
  flush();
  return [list, index];
}

/**
 * Render Markdown `source` (model output or user text) as a DocumentFragment.
 * Every character of `source` that is shown reaches the page as text, never as markup.
 */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let index = 0;
  while (index < lines.length) {
    const line = lines[index];
    const fence = line.match(FENCE);
    if (fence) {
      const marker = fence[1];
      const body = [];
      index += 1;
      while (index < lines.length && !lines[index].trim().startsWith(marker)) {
        body.push(lines[index]);
        index += 1;
      }
      index += 1; // the closing fence; an unclosed block (still streaming) runs to the end
      fragment.append(codeBlock(body.join("\n"), fence[2]));
    } else if (!line.trim()) {
      index += 1;
    } else if (HEADING.test(line)) {
      const [, hashes, text] = line.match(HEADING);
      const heading = element(`h${Math.min(hashes.length + 2, 6)}`);
      appendInline(heading, text);
      fragment.append(heading);
      index += 1;
    } else if (RULE.test(line)) {
      fragment.append(element("hr"));
      index += 1;
    } else if (LIST_ITEM.test(line)) {
      const [list, next] = parseList(lines, index);
      fragment.append(list);
      index = next;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (index < lines.length && QUOTE.test(lines[index])) {
        quoted.push(lines[index].match(QUOTE)[1]);
        index += 1;
      }
      const quote = element("blockquote");
      quote.append(renderMarkdown(quoted.join("\n")));
      fragment.append(quote);
    } else {
      const paragraphLines = [];
      while (index < lines.length && lines[index].trim() && !isBlockStart(lines[index])) {
        paragraphLines.push(lines[index]);
        index += 1;
      }
      const paragraph = element("p");
      appendLines(paragraph, paragraphLines);
      fragment.append(paragraph);
    }
  }
  return fragment;
}
