// One colour per weight-matrix type, the same on every card (attention blues, MLP greens).
export const COLOURS = { Q: "#1d4ed8", K: "#3b82f6", V: "#93c5fd", QKV: "#2563eb", O: "#6366f1", "MLP gate": "#047857", "MLP in": "#10b981", "MLP out": "#6ee7b7", other: "#9ca3af" };
const FALLBACK = ["#f59e0b", "#ef4444", "#8b5cf6", "#14b8a6"];

export const colour = (type, i) => COLOURS[type] || FALLBACK[i % FALLBACK.length];
